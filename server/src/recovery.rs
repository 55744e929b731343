//! Start-up: rebuild the state from the keystore file and the log after it.
//!
//! The keystore file holds the state at some applied index; every log record
//! after that index is applied in order. The log itself truncates a torn tail
//! and refuses a corrupt record in the middle (see `storage::log`), so what
//! this returns is exactly what was durable when the server stopped.

use std::path::Path;
use std::time::Instant;

use data::state::State;
use thiserror::Error;

use crate::storage::{keystore_file, Log, StorageError};

#[derive(Debug, Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("log in {dir} starts at index {first} but the keystore file ends at {applied}: entries are missing")]
    Gap {
        dir: String,
        first: u64,
        applied: u64,
    },
}

/// The recovered state and the log, opened for appending after it.
pub struct Recovered {
    pub state: State,
    pub log: Log,
    pub replayed: usize,
}

pub fn recover(
    data_dir: &Path,
    item_bytes_max: usize,
    segment_bytes_max: u64,
) -> Result<Recovered, RecoveryError> {
    let started = Instant::now();
    std::fs::create_dir_all(data_dir).map_err(|e| StorageError::Io {
        op: "create directory",
        path: data_dir.to_path_buf(),
        source: e,
    })?;
    let mut state = match keystore_file::load(data_dir, item_bytes_max)? {
        Some((state, _term)) => state,
        None => State::new(item_bytes_max),
    };
    let snapshot_index = state.applied_index();
    let (log, records) = Log::open(data_dir, segment_bytes_max)?;
    let mut replayed = 0;
    // At most one new key per record: room for all up front, and what was
    // not needed given back after.
    state.reserve(records.len().min(data::state::RESERVE_ITEMS_MAX));
    for record in records {
        if record.index <= state.applied_index() {
            continue;
        }
        if record.index != state.applied_index() + 1 {
            return Err(RecoveryError::Gap {
                dir: data_dir.display().to_string(),
                first: record.index,
                applied: state.applied_index(),
            });
        }
        state.apply(record.index, &record.command);
        replayed += 1;
    }
    state.shrink_to_fit();
    tracing::info!(
        snapshot_index,
        replayed,
        items = state.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered"
    );
    Ok(Recovered {
        state,
        log,
        replayed,
    })
}

/// Cluster mode's start-up: the keystore file's state and the log after it,
/// not applied (only the leader knows which entries are committed; the
/// replication driver applies them as the commit index advances).
pub struct Unapplied {
    pub state: State,
    /// Term of the keystore's applied index.
    pub snapshot_term: u64,
    pub log: Log,
    /// Records after the keystore's applied index, in order.
    pub records: Vec<crate::storage::Record>,
}

pub fn open_unapplied(
    data_dir: &Path,
    item_bytes_max: usize,
    segment_bytes_max: u64,
) -> Result<Unapplied, RecoveryError> {
    std::fs::create_dir_all(data_dir).map_err(|e| StorageError::Io {
        op: "create directory",
        path: data_dir.to_path_buf(),
        source: e,
    })?;
    let (state, snapshot_term) = match keystore_file::load(data_dir, item_bytes_max)? {
        Some((state, term)) => (state, term),
        None => (State::new(item_bytes_max), 0),
    };
    let applied = state.applied_index();
    let (log, records) = Log::open(data_dir, segment_bytes_max)?;
    let records: Vec<_> = records.into_iter().filter(|r| r.index > applied).collect();
    if let Some(first) = records.first() {
        if first.index != applied + 1 {
            return Err(RecoveryError::Gap {
                dir: data_dir.display().to_string(),
                first: first.index,
                applied,
            });
        }
    }
    Ok(Unapplied {
        state,
        snapshot_term,
        log,
        records,
    })
}
