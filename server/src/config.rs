//! The server's settings, as `store addsrv` parsed them. Passed explicitly to
//! everything that needs a setting; nothing reads flags or the environment
//! behind its back.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use data::cluster_file::ClusterFile;
use data::frame::{GroupId, Peer, ServerId};

use crate::replica::Timing;

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
    /// `-Y`: text connections log in with a user of this file first.
    pub auth_file: Option<PathBuf>,
    /// `-S --sasl-pwdb`: binary connections authenticate with SASL PLAIN
    /// as a user of this file first (memcached's `MEMCACHED_SASL_PWDB`).
    pub sasl_pwdb: Option<PathBuf>,
    /// `-Z`: clients connect with TLS, and so do forwarding lanes.
    pub tls: Option<TlsSettings>,
    /// Set with `--lb`: the server joins a replica group.
    pub cluster: Option<ClusterSettings>,
    /// `-s`: clients connect on this Unix socket instead of TCP (a server
    /// alone only: a group's members reach each other over TCP).
    pub unix_socket: Option<UnixSocket>,
}

/// memcached's `-s PATH` and `-a MASK`.
#[derive(Clone, Debug)]
pub struct UnixSocket {
    pub path: PathBuf,
    /// Permission bits of the socket file (`-a`, octal; memcached's 0700).
    pub mask: u32,
}

/// memcached's default `-a`.
pub const UNIX_MASK_DEFAULT: u32 = 0o700;

impl Config {
    /// `stats settings`: memcached's names where it has the setting.
    pub fn stats_settings(&self, limit_bytes: u64) -> Vec<(String, String)> {
        [
            ("maxbytes", limit_bytes.to_string()),
            ("maxconns", self.connections_max.to_string()),
            ("tcpport", self.port.to_string()),
            ("udpport", "0".to_string()),
            ("inter", self.listen.to_string()),
            (
                "domain_socket",
                self.unix_socket
                    .as_ref()
                    .map_or("NULL".to_string(), |u| u.path.display().to_string()),
            ),
            (
                "umask",
                format!(
                    "{:o}",
                    self.unix_socket
                        .as_ref()
                        .map_or(UNIX_MASK_DEFAULT, |u| u.mask)
                ),
            ),
            ("verbosity", self.verbose.to_string()),
            ("evictions", "off".to_string()),
            ("num_threads", self.threads.to_string()),
            ("cas_enabled", "yes".to_string()),
            ("item_size_max", self.item_bytes_max.to_string()),
            ("flush_enabled", "yes".to_string()),
            ("binding_protocol", "auto-negotiate".to_string()),
            ("auth_enabled_sasl", yes_no(self.sasl_pwdb.is_some())),
            ("auth_enabled_ascii", yes_no(self.auth_file.is_some())),
            ("client_flags_size", "4".to_string()),
            ("data_dir", self.data_dir.display().to_string()),
            ("snapshot_log_bytes", self.snapshot_log_bytes.to_string()),
            (
                "read_mode",
                self.cluster
                    .as_ref()
                    .map_or("linearizable", |c| c.read_mode.name())
                    .to_string(),
            ),
        ]
        .into_iter()
        .chain(match &self.tls {
            Some(tls) => tls.stats_settings(),
            None => vec![("ssl_enabled", "no".to_string())],
        })
        .map(|(name, value)| (name.to_string(), value))
        .collect()
    }

    /// Segments are kept well below the snapshot threshold so that a
    /// snapshot can delete most of the log.
    pub fn segment_bytes_max(&self) -> u64 {
        (self.snapshot_log_bytes / 4).clamp(4096, SEGMENT_BYTES_MAX_DEFAULT)
    }
}

fn yes_no(on: bool) -> String {
    if on { "yes" } else { "no" }.to_string()
}

/// Whether and how client certificates are checked (`ssl_verify_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyMode {
    None,
    /// Checked when the client sends one.
    Request,
    /// A client without a valid certificate is refused.
    Require,
}

impl VerifyMode {
    /// memcached's numbers.
    pub fn from_memcached(n: u8) -> Option<VerifyMode> {
        match n {
            0 => Some(VerifyMode::None),
            1 => Some(VerifyMode::Request),
            2 | 3 => Some(VerifyMode::Require),
            _ => None,
        }
    }

    pub fn number(self) -> u8 {
        match self {
            VerifyMode::None => 0,
            VerifyMode::Request => 1,
            VerifyMode::Require => 2,
        }
    }
}

/// `-Z` and its `ssl_*` settings.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub chain_cert: PathBuf,
    /// The private key; `None`: in the chain file.
    pub key: Option<PathBuf>,
    /// Certificates of the authorities trusted for client certificates and
    /// for the leader's certificate on forwarding lanes (`None`: the
    /// certificates in the chain file are trusted for the latter).
    pub ca_cert: Option<PathBuf>,
    pub verify_mode: VerifyMode,
    /// TLS 1.3 only (`ssl_min_version` 3), else 1.2 and 1.3.
    pub tls13_only: bool,
}

impl TlsSettings {
    /// `stats settings`, with memcached's names.
    pub fn stats_settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ssl_enabled", "yes".into()),
            ("ssl_chain_cert", self.chain_cert.display().to_string()),
            (
                "ssl_key",
                self.key
                    .as_deref()
                    .unwrap_or(&self.chain_cert)
                    .display()
                    .to_string(),
            ),
            ("ssl_verify_mode", self.verify_mode.number().to_string()),
            (
                "ssl_ca_cert",
                self.ca_cert
                    .as_deref()
                    .map_or("NULL".into(), |p| p.display().to_string()),
            ),
            (
                "ssl_min_version",
                if self.tls13_only {
                    "tlsv1.3"
                } else {
                    "tlsv1.2"
                }
                .into(),
            ),
        ]
    }
}

/// How reads are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// The leader's lease, else ReadIndex; followers forward reads (DESIGN
    /// §2, §4a).
    Linearizable,
    /// ReadIndex on the leader for every read, lease or not.
    ReadIndex,
    /// Every server answers from its own state: fast, possibly stale.
    Local,
}

impl ReadMode {
    pub fn name(self) -> &'static str {
        match self {
            ReadMode::Linearizable => "linearizable",
            ReadMode::ReadIndex => "read-index",
            ReadMode::Local => "local",
        }
    }
}

/// Who elects a group's leader.
#[derive(Clone, Debug)]
pub enum Elector {
    /// The LBs at these UDP addresses (DESIGN §3, §3c), never empty: a data
    /// group's. Every frame to the LB goes to each; the one leading the LB
    /// group acts.
    Lb(Vec<SocketAddr>),
    /// The members themselves, by vote (DESIGN §3b), a fixed set with no
    /// LB: the LB group's way, and a group that must run without one.
    Vote(StaticGroup),
}

/// A group of fixed members that elects its own leader.
#[derive(Clone, Debug)]
pub struct StaticGroup {
    /// This server's id among them (kept in its `meta`: a data directory
    /// holds one member).
    pub id: ServerId,
    /// Every member, this server included, with its addresses.
    pub members: Vec<Peer>,
    /// Whether this member joins a running group (added by its leader, the
    /// configuration comes in the log) rather than founding it with
    /// `members` as the first voters.
    pub joining: bool,
}

/// Cluster settings from `store addsrv --lb`.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// The group this server is a member of: frames of any other are
    /// dropped. Data servers are in [`GroupId::FIRST`]; the LBs' members
    /// are in [`GroupId::LB`].
    pub group: GroupId,
    /// Who elects the group's leader.
    pub elector: Elector,
    pub cluster: ClusterFile,
    /// Where the UDP socket binds.
    pub udp_listen: SocketAddr,
    /// The UDP address registered with the LB, which peers send to, when it
    /// is not the bound one (a relay or NAT in between); `None`: the bound.
    pub udp_advertise: Option<SocketAddr>,
    pub timing: Timing,
    pub read_mode: ReadMode,
}
