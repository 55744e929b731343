//! A replica group's log and state, opened from the group's directory and
//! replicated by the [`crate::driver`]: what a data server runs for its
//! group ([`open`], under the listener), and what each LB runs for the LB
//! group ([`GroupLog`], DESIGN §3c), so that the LBs' decisions go through
//! the same replica core, log, fsync and vote as the data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use bytes::{Bytes, BytesMut};
use data::command::{Command, Op};
use data::frame::{LogIndex, Role, Term};
use data::state::Outcome;

use crate::config::ClusterSettings;
use crate::driver::{self, ClusterHandle, ClusterView, DriverStart};
use crate::listener::ServerError;
use crate::memory::{MemoryLimit, Reservation};
use crate::recovery;
use crate::state::{self, SharedState};
use crate::stats::Stats;
use crate::storage::StorageError;
use crate::write_path::{CommitError, WritePath};

/// How a group's files are kept, besides its directory.
#[derive(Clone, Copy, Debug)]
pub struct GroupFiles {
    pub item_bytes_max: usize,
    pub segment_bytes_max: u64,
    /// Write a keystore file after this many bytes of log.
    pub snapshot_log_bytes: u64,
    /// `-m`, 0 for none.
    pub memory_limit_bytes: u64,
}

/// A group's write path and state, running.
pub struct OpenGroup {
    pub handle: ClusterHandle,
    pub state: SharedState,
    pub memory: Arc<MemoryLimit>,
    /// The driver thread; it ends once every handle is dropped, after its
    /// last fsync.
    pub worker: JoinHandle<Result<(), StorageError>>,
}

/// Recovers the group in `dir` (keystore file, then the log records after
/// it, not applied: only a leader knows which are committed) and starts its
/// driver.
pub async fn open(
    settings: ClusterSettings,
    dir: PathBuf,
    tcp_advertise: SocketAddr,
    files: GroupFiles,
    stats: Arc<Stats>,
) -> Result<OpenGroup, ServerError> {
    let recover_dir = dir.clone();
    let unapplied = tokio::task::spawn_blocking(move || {
        recovery::open_unapplied(&recover_dir, files.item_bytes_max, files.segment_bytes_max)
    })
    .await
    .map_err(|_| ServerError::Panicked { what: "recovery" })??;
    let snapshot_index = LogIndex(unapplied.state.applied_index());
    let entries = unapplied
        .records
        .into_iter()
        .map(|record| {
            let mut payload = BytesMut::with_capacity(record.command.encoded_len());
            record.command.encode(&mut payload);
            (Term(record.term), payload.freeze())
        })
        .collect();
    let state = Arc::new(RwLock::new(unapplied.state));
    let memory = Arc::new(MemoryLimit::new(files.memory_limit_bytes));
    let (handle, worker) = driver::start(DriverStart {
        settings,
        data_dir: dir,
        tcp_advertise,
        log: unapplied.log,
        entries,
        snapshot_index,
        snapshot_term: Term(unapplied.snapshot_term),
        state: state.clone(),
        stats,
        memory: memory.clone(),
        snapshot_log_bytes: files.snapshot_log_bytes,
        item_bytes_max: files.item_bytes_max,
    })?;
    Ok(OpenGroup {
        handle,
        state,
        memory,
        worker,
    })
}

/// A group's log run inside another process (an LB): propose a value for a
/// key, read the applied state, and see whether this member leads.
pub struct GroupLog {
    handle: ClusterHandle,
    state: SharedState,
    worker: JoinHandle<Result<(), StorageError>>,
}

/// The files of the LB group's log are small: its state is one registry.
const EMBEDDED_FILES: GroupFiles = GroupFiles {
    item_bytes_max: 1024 * 1024,
    segment_bytes_max: 4 * 1024 * 1024,
    snapshot_log_bytes: 16 * 1024 * 1024,
    memory_limit_bytes: 0,
};

impl GroupLog {
    /// Opens the group whose files are in `dir` and starts replicating.
    /// `tcp_advertise` is the address this member's own clients reach it
    /// at, as its peers learn it.
    pub async fn open(
        settings: ClusterSettings,
        dir: &Path,
        tcp_advertise: SocketAddr,
    ) -> Result<GroupLog, ServerError> {
        let stats = Arc::new(Stats::default());
        let group = open(
            settings,
            dir.to_path_buf(),
            tcp_advertise,
            EMBEDDED_FILES,
            stats,
        )
        .await?;
        Ok(GroupLog {
            handle: group.handle,
            state: group.state,
            worker: group.worker,
        })
    }

    /// The replication state as the driver last published it.
    pub fn view(&self) -> &ClusterView {
        &self.handle.view
    }

    /// The term this member leads in, if it is the leader.
    pub fn leading(&self) -> Option<Term> {
        let view = self.view();
        (view.role() == Role::Leader)
            .then(|| Term(view.term.load(std::sync::atomic::Ordering::Acquire)))
    }

    /// Sets `key` to `value` through the group's log; `Ok` once the entry is
    /// committed on a majority and applied here.
    pub async fn set(&self, key: &'static [u8], value: Vec<u8>) -> Result<(), CommitError> {
        let command = set_command(key, value, crate::clock::now_s());
        let outcome = self.handle.submit(command, Reservation::none()).await?;
        match outcome.await.unwrap_or(Err(CommitError::Storage))? {
            Outcome::Stored { .. } => Ok(()),
            other => unreachable!("a set answered {other:?}"),
        }
    }

    /// Waits until the state holds every entry committed before the call,
    /// as a linearizable read does: on the leader, once its first entry of
    /// the term is committed and it still leads.
    pub async fn read_barrier(&self) -> Result<(), CommitError> {
        self.handle.read_barrier().await
    }

    /// This group's members' addresses (it elects by vote), and with
    /// `target` (only while this member leads, once it has applied every
    /// entry committed before), the members it should have: it moves the
    /// configuration toward them, one change at a time.
    pub async fn set_members(
        &self,
        members: Vec<data::frame::Peer>,
        target: bool,
    ) -> Result<(), CommitError> {
        self.handle.set_members(members, target).await
    }

    /// `key`'s value in the applied state.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let state = state::read(&self.state);
        state
            .get(key, crate::clock::now_s())
            .map(|item| item.data().to_vec())
    }

    /// Stops replicating: the driver drains its queue and syncs its log.
    pub async fn close(self) -> Result<(), ServerError> {
        let GroupLog {
            handle,
            state,
            worker,
        } = self;
        drop(handle);
        drop(state);
        join_worker(worker, "group log").await
    }
}

/// The command [`GroupLog::set`] proposes: `key` set to `value`, never
/// expiring, at wall time `time_s` (the simulator proposes the same).
pub fn set_command(key: &'static [u8], value: Vec<u8>, time_s: u64) -> Command {
    Command {
        time_s,
        op: Op::Store {
            mode: data::command::StoreMode::Set,
            key: Bytes::from_static(key),
            flags: 0,
            exptime: data::exptime::NEVER,
            data: Bytes::from(value),
            cas_unique: 0,
        },
        unique: None,
    }
}

/// Waits for a write path's thread to end (once every handle to it is
/// gone it drains its queue and syncs its log), and how it ended.
pub async fn join_worker(
    worker: JoinHandle<Result<(), StorageError>>,
    what: &'static str,
) -> Result<(), ServerError> {
    let panicked = || ServerError::Panicked { what };
    let joined = tokio::task::spawn_blocking(move || worker.join())
        .await
        .map_err(|_| panicked())?;
    joined.map_err(|_| panicked())??;
    Ok(())
}
