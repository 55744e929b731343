//! The server's settings, as `store addsrv` parsed them. Passed explicitly to
//! everything that needs a setting; nothing reads flags or the environment
//! behind its back.

use std::net::IpAddr;
use std::path::PathBuf;

/// Default port, as memcached's.
pub const PORT_DEFAULT: u16 = 11211;
/// Default maximum simultaneous connections (`-c`), as memcached's.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// Default worker threads (`-t`), as memcached's.
pub const THREADS_DEFAULT: usize = 4;
/// Write a keystore file and drop the log before it once this many bytes of
/// log were written since the last one.
pub const SNAPSHOT_LOG_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
/// Log segment size; segments are the unit the log is deleted in.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: IpAddr,
    pub port: u16,
    pub connections_max: usize,
    pub item_bytes_max: usize,
    pub threads: usize,
    pub verbose: u8,
    pub data_dir: PathBuf,
    pub snapshot_log_bytes: u64,
    /// `-m`: what the items may count before writes that add to them are
    /// refused, 0 for no limit ([`crate::memory`]).
    pub memory_limit_bytes: u64,
    /// `-A`: the `shutdown` command stops the server (memcached's flag).
    pub shutdown_enabled: bool,
    /// Set with `--lb`: the server joins a replica group.
    pub cluster: Option<crate::cluster::ClusterSettings>,
}

impl Config {
    /// Segments are kept well below the snapshot threshold so that a
    /// snapshot can delete most of the log.
    pub fn segment_bytes_max(&self) -> u64 {
        (self.snapshot_log_bytes / 4).clamp(4096, SEGMENT_BYTES_MAX_DEFAULT)
    }
}
