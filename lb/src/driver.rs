//! The LB's I/O on tokio: the UDP control socket, the timer that drives
//! [`Core::tick`], persistence of [`DurableState`] on a blocking thread, and
//! the TCP discovery listener. [`run`] is the entry point (`store addlb`
//! and tests call it).
//!
//! It decides nothing about elections or membership: every decision is the
//! core's, and this module only carries them out, in order, enforcing the
//! one ordering rule of the core's output (a `Persist` completes before any
//! later `Send`). One task owns the core, the UDP socket and the registry
//! file; discovery connections talk to it through a bounded channel.
//!
//! Datagrams are dropped silently (and counted) when they fail the MAC, are
//! malformed, belong to another cluster or are not addressed to the LB (0).
//! The LB sends only to registered servers' registered UDP addresses, never
//! back to a `recv_from` address.
//!
//! Frames to the leader go out through a second socket connected to the
//! leader's address (the probe). On a connected UDP socket the kernel
//! reports an ICMP "port unreachable" as a refused `recv`: the leader's
//! process is gone, and the core starts an election at once rather than
//! after the election timeout. Servers ignore a datagram's source port, so
//! which socket a frame leaves from changes nothing for them.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use data::admin_proof::CHALLENGE_BYTES;
use data::frame::{
    self, Frame, FrameError, GroupId, Header, OtherVersions, ServerId, Term, DATAGRAM_BYTES_MAX,
    SECRET_BYTES,
};
use rand::RngCore;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster_file::{self, ClusterFile, ClusterFileError};
use crate::core::{Action, ClusterView, Core, CoreConfig, RemoveError};
use crate::discovery::{self, LbChange, LbChangeError, Parsed, Request, Standing, LINE_BYTES_MAX};
use crate::group::{self, GroupError, LbLog, Peers, PeersError};
use crate::join;
use crate::registry::{DurableState, RegistryError, RegistryFile};

/// `store addlb`'s exit code once `store remove-lb` took it out of its
/// group ([`LbError::Removed`]): a supervisor (or the nemesis) tells it
/// from a failure.
pub const EXIT_REMOVED: i32 = 3;

/// `store addlb`'s default TCP discovery port (and UDP control port).
pub const PORT_DEFAULT: u16 = 11311;
pub const HEARTBEAT_MS_DEFAULT: u64 = 100;
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 1000;

/// Bounds on the timing flags, so sums of times cannot overflow and a typo
/// cannot make failover take a day.
pub const HEARTBEAT_MS_MAX: u64 = 60_000;
pub const ELECTION_TIMEOUT_MS_MAX: u64 = 600_000;

/// Simultaneous discovery connections; more are told so and closed.
pub const CONNECTIONS_MAX: usize = 64;

/// Discovery requests waiting for the control task; senders wait when full.
const REQUESTS_QUEUED_MAX: usize = 64;

/// A discovery connection that neither sends nor accepts bytes for this
/// long is closed, so idle clients cannot hold every connection slot.
const CONNECTION_IDLE_MS: u64 = 60_000;

/// How long shutdown waits for discovery connections to finish.
const SHUTDOWN_DRAIN_MS: u64 = 2_000;

/// The LB's settings; `store addlb` builds it from its flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbConfig {
    pub listen: IpAddr,
    /// TCP discovery port; 0 picks a free one.
    pub tcp_port: u16,
    /// UDP control port; 0 picks a free one.
    pub udp_port: u16,
    /// Holds `cluster` and `registry`; created if missing.
    pub data_dir: PathBuf,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// Every LB of this LB's group by discovery address, this one included
    /// (`--peers`, [`crate::group`]); empty for an LB alone.
    pub peers: Vec<SocketAddr>,
    /// LBs of a running group this LB was added to (`--join`, after
    /// `add-lb`): it asks them for the group's list, unless it kept one
    /// ([`crate::join`]). Empty unless it joins; never with `peers`.
    pub join: Vec<SocketAddr>,
    /// The cluster file to use instead of the data directory's (which is
    /// made on a first start): every LB of a group shares one.
    pub cluster_file: Option<PathBuf>,
}

impl LbConfig {
    /// The cluster file servers must be given (`--cluster-file`).
    pub fn cluster_file_path(&self) -> PathBuf {
        self.cluster_file
            .clone()
            .unwrap_or_else(|| cluster_file::path_in(&self.data_dir))
    }

    fn validate(&self) -> Result<CoreConfig, LbError> {
        if !self.peers.is_empty() && !self.join.is_empty() {
            return Err(LbError::Config(
                "--peers founds a group and --join joins one: give one of them".to_string(),
            ));
        }
        let in_group = !self.peers.is_empty() || !self.join.is_empty();
        if in_group && self.udp_port != self.tcp_port {
            // The group's list names each LB by one address; servers send
            // their control datagrams to it.
            return Err(LbError::Config(
                "an LB of a group takes control datagrams on its discovery port: leave --udp-port out"
                    .to_string(),
            ));
        }
        if !(1..=HEARTBEAT_MS_MAX).contains(&self.heartbeat_ms) {
            return Err(LbError::Config(format!(
                "--heartbeat-ms must be between 1 and {HEARTBEAT_MS_MAX}"
            )));
        }
        // Followers must be able to miss a heartbeat or two before they
        // count as having lost the leader.
        if self.election_timeout_ms < 2 * self.heartbeat_ms
            || self.election_timeout_ms > ELECTION_TIMEOUT_MS_MAX
        {
            return Err(LbError::Config(format!(
                "--election-timeout-ms must be at least twice --heartbeat-ms and at most \
                 {ELECTION_TIMEOUT_MS_MAX}"
            )));
        }
        Ok(CoreConfig {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_ms: self.election_timeout_ms,
        })
    }
}

/// Why the LB could not start or had to stop.
#[derive(Debug, Error)]
pub enum LbError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("data directory {0} is in use by another LB (it holds {0}/lock)")]
    DataDirInUse(PathBuf),
    #[error(transparent)]
    ClusterFile(#[from] ClusterFileError),
    #[error(transparent)]
    Peers(#[from] PeersError),
    #[error("the LB group's log: {0}")]
    GroupLog(#[from] server::listener::ServerError),
    #[error(transparent)]
    Group(#[from] GroupError),
    /// Loading failed, or a save did: then the LB stops, because its state
    /// in memory is ahead of its disk and it must not act on it.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("receive on the control socket: {0}")]
    Receive(#[source] io::Error),
    #[error("a blocking file task panicked")]
    TaskPanicked,
    #[error("joining the LB group: {0}")]
    Join(String),
    /// The LB group's list could not be kept in or read from the data
    /// directory.
    #[error(transparent)]
    Storage(#[from] server::storage::StorageError),
    /// `remove-lb` took this LB out of its group: it stops.
    #[error("removed from the LB group (store remove-lb): this LB stops; its data directory is no longer needed")]
    Removed,
}

/// The driver's counters; `stats` reads them as they are.
#[derive(Debug, Default)]
struct Counters {
    frames_received: AtomicU64,
    frames_bad_mac: AtomicU64,
    frames_malformed: AtomicU64,
    frames_other_cluster: AtomicU64,
    frames_not_for_lb: AtomicU64,
    /// Frames from data servers that reached an LB not leading its group.
    frames_not_leading: AtomicU64,
    frames_sent: AtomicU64,
    frames_send_failed: AtomicU64,
    connections_refused: AtomicU64,
    /// Commands that change the cluster, carried out and refused for want
    /// of a valid proof of the cluster secret.
    admin_accepted: AtomicU64,
    admin_refused: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [(&'static str, u64); 11] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("frames_received", get(&self.frames_received)),
            ("frames_bad_mac", get(&self.frames_bad_mac)),
            ("frames_malformed", get(&self.frames_malformed)),
            ("frames_other_cluster", get(&self.frames_other_cluster)),
            ("frames_not_for_lb", get(&self.frames_not_for_lb)),
            ("frames_not_leading", get(&self.frames_not_leading)),
            ("frames_sent", get(&self.frames_sent)),
            ("frames_send_failed", get(&self.frames_send_failed)),
            ("connections_refused", get(&self.connections_refused)),
            ("admin_accepted", get(&self.admin_accepted)),
            ("admin_refused", get(&self.admin_refused)),
        ]
    }
}

/// What a discovery connection asks of the control task.
enum CoreRequest {
    View(oneshot::Sender<(Standing, ClusterView)>),
    Remove(ServerId, oneshot::Sender<Result<(), RemoveError>>),
    /// The LB group's list ([`Peers::encode`]; empty alone).
    Lbs(oneshot::Sender<Vec<u8>>),
    ChangeLbs(LbChange, oneshot::Sender<Result<ServerId, LbChangeError>>),
}

/// Runs the LB until `shutdown` is cancelled (then returns `Ok`) or a fatal
/// error. Calls `ready` with the bound TCP and UDP addresses once both
/// sockets are open and the durable state is loaded.
pub async fn run(
    config: LbConfig,
    shutdown: CancellationToken,
    ready: impl FnOnce(SocketAddr, SocketAddr),
) -> Result<(), LbError> {
    let core_config = config.validate()?;
    let peers = match config.peers.len() {
        0 => None,
        _ => Some(Peers::new(&config.peers, config.listen, config.tcp_port)?),
    };
    let dir = config.data_dir.clone();
    let shared_cluster_file = config.cluster_file.clone();
    let (cluster, durable, kept_list, _data_dir_lock) = tokio::task::spawn_blocking(move || {
        let data_dir_error = |source| LbError::DataDir {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(data_dir_error)?;
        // Two LBs on one directory would both persist terms and name
        // leaders; the second is refused. The lock lasts as long as the
        // file stays open, or until the process dies, whatever way.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(data_dir_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(LbError::DataDirInUse(dir)),
            Err(std::fs::TryLockError::Error(source)) => return Err(data_dir_error(source)),
        }
        let cluster = match &shared_cluster_file {
            Some(path) => cluster_file::load(path)?,
            None => {
                // The OS-seeded RNG: the secret keys every datagram's MAC.
                let (cluster, created) = cluster_file::load_or_create(&dir, || {
                    cluster_file::generate(&mut rand::rngs::OsRng)
                })?;
                if created {
                    tracing::info!(path = %cluster_file::path_in(&dir).display(), "created the cluster file");
                }
                cluster
            }
        };
        // In a group the registry lives in the group's log instead.
        let durable = RegistryFile::new(&dir).load()?;
        let kept_list = join::load_members(&dir)?;
        Ok::<_, LbError>((cluster, durable, kept_list, lock))
    })
    .await
    .map_err(|_| LbError::TaskPanicked)??;
    let peers = match (peers, config.join.is_empty()) {
        (None, false) => {
            let peers = match &kept_list {
                Some(list) => Peers::join(list, config.listen, config.tcp_port)
                    .map_err(|e| LbError::Join(e.to_string()))?,
                None => join::find_place(&config.join, config.listen, config.tcp_port)
                    .await
                    .map_err(|e| LbError::Join(e.to_string()))?,
            };
            Some(peers)
        }
        (peers, _) => peers,
    };

    let udp_addr = SocketAddr::new(config.listen, config.udp_port);
    let socket = UdpSocket::bind(udp_addr)
        .await
        .map_err(|source| LbError::Bind {
            what: "udp",
            addr: udp_addr,
            source,
        })?;
    let tcp_addr = SocketAddr::new(config.listen, config.tcp_port);
    let listener = TcpListener::bind(tcp_addr)
        .await
        .map_err(|source| LbError::Bind {
            what: "tcp",
            addr: tcp_addr,
            source,
        })?;
    let local = |r: io::Result<SocketAddr>, what, addr| {
        r.map_err(|source| LbError::Bind { what, addr, source })
    };
    let udp_bound = local(socket.local_addr(), "udp", udp_addr)?;
    let tcp_bound = local(listener.local_addr(), "tcp", tcp_addr)?;
    let authority = match &peers {
        None => {
            tracing::info!(
                term = %durable.term,
                leader = %durable.leader,
                members = durable.members.len(),
                "loaded the registry"
            );
            Authority::Alone(RegistryFile::new(&config.data_dir))
        }
        Some(peers) => {
            if !durable.members.is_empty() {
                tracing::warn!(
                    "this LB's own registry file is not used: the LB group's log holds the registry"
                );
            }
            let settings = peers.settings(
                cluster.clone(),
                config.listen,
                server::replica::Timing::new(config.heartbeat_ms, config.election_timeout_ms),
            );
            let dir = server::storage::layout::group_dir(&config.data_dir, GroupId::LB);
            let log = server::group_log::GroupLog::open(settings, &dir, peers.me().tcp).await?;
            let log = LbLog::new(log);
            // The founders' list is the group's first configuration (in the
            // settings); the list this LB kept may name LBs added since.
            let peers = match &kept_list {
                Some(list) => peers.with_list(list).map_err(GroupError::from)?,
                None => peers.clone(),
            };
            log.set_members(&peers, false).await?;
            tracing::info!(id = %peers.me, lbs = peers.members.len(), joining = peers.joining, "replicating the registry in the LB group");
            Authority::Group {
                log,
                leading: None,
                peers,
                list_seen: kept_list,
                data_dir: config.data_dir.clone(),
            }
        }
    };

    let counters = Arc::new(Counters::default());
    let (requests_tx, requests_rx) = mpsc::channel(REQUESTS_QUEUED_MAX);
    let tracker = TaskTracker::new();
    // A child token: discovery stops when the LB is shut down, and also when
    // the control task fails.
    let discovery_stop = shutdown.child_token();
    tracker.spawn(accept_loop(
        listener,
        Discovery {
            requests: requests_tx,
            counters: Arc::clone(&counters),
            secret: cluster.secret,
        },
        discovery_stop.clone(),
        tracker.clone(),
    ));
    ready(tcp_bound, udp_bound);

    let start = Instant::now();
    let control = Control {
        // An LB in a group acts once it leads the group.
        core: matches!(authority, Authority::Alone(_))
            .then(|| Core::new(core_config, durable.clone(), 0)),
        core_config,
        last_logged: durable,
        socket,
        cluster,
        authority,
        counters,
        start,
        out: BytesMut::with_capacity(DATAGRAM_BYTES_MAX),
        probe: None,
        other_versions: OtherVersions::default(),
        announced: None,
    };
    let (authority, result) = control.run(&shutdown, requests_rx).await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "the LB is stopping");
    }
    if let Authority::Group { log, .. } = authority {
        if let Err(e) = log.close().await {
            tracing::error!(error = %e, "the LB group's log did not close cleanly");
        }
    }
    discovery_stop.cancel();
    tracker.close();
    if timeout(Duration::from_millis(SHUTDOWN_DRAIN_MS), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("discovery connections did not finish within the shutdown deadline");
    }
    result
}

/// Where the registry is kept, and whether this LB may act on it.
enum Authority {
    /// An LB alone: its registry file, and it always acts.
    Alone(RegistryFile),
    /// A member of an LB group: the group's log. It acts while it leads
    /// the group, with a core made from the log's registry.
    Group {
        log: LbLog,
        /// The LB term the running core was made in.
        leading: Option<Term>,
        /// The group's LBs, as this LB last applied its list.
        peers: Peers,
        /// That list, as the log holds it (`None` while the founders').
        list_seen: Option<Vec<u8>>,
        /// Where the list is kept for a restart ([`join::MEMBERS_FILE`]).
        data_dir: PathBuf,
    },
}

/// How often an LB of a group looks at whether it leads the group: the
/// replica publishes its role in a view, not as an event.
const LEADERSHIP_POLL_MS: u64 = 10;

/// How long, in election timeouts, an LB waits for a registry write to
/// commit before it takes itself to be deposed.
const PERSIST_WAIT_TIMEOUTS: u64 = 3;

/// How often the acting LB of a group tells every server the group's list
/// of LBs ([`data::frame::Message::Lbs`]), besides at once when it changes:
/// a server that missed it, or restarted, hears it within this.
const LBS_ANNOUNCE_MS: u64 = 1_000;

/// The longest the control task sleeps with nothing to do (an LB with no
/// core has no deadline of its own).
const IDLE_WAKE_MS: u64 = 1_000;

/// The control task: owns the core, the UDP socket and the registry file.
struct Control {
    /// Running while this LB acts for the cluster: always alone, while it
    /// leads in a group.
    core: Option<Core>,
    core_config: CoreConfig,
    /// The last persisted state logged, to log only term/leader changes.
    last_logged: DurableState,
    socket: UdpSocket,
    cluster: ClusterFile,
    authority: Authority,
    counters: Arc<Counters>,
    start: Instant,
    out: BytesMut,
    /// The socket frames to the leader leave from, connected to it.
    probe: Option<Probe>,
    /// Frames of another release, reported once per version.
    other_versions: OtherVersions,
    /// The epoch of the LB list last told to the servers, and when.
    announced: Option<(u64, u64)>,
}

/// A UDP socket connected to one server's registered address.
struct Probe {
    to: ServerId,
    addr: SocketAddr,
    socket: UdpSocket,
}

impl Probe {
    /// Resolves when the kernel reports that a datagram to the probed
    /// address was refused. Anything that arrives on the probe is dropped:
    /// servers send only to the LB's registered control port.
    async fn refused(probe: Option<&Probe>) -> ServerId {
        let Some(probe) = probe else {
            return std::future::pending().await;
        };
        let mut buf = [0u8; 1];
        loop {
            match probe.socket.recv(&mut buf).await {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return probe.to,
                // A stray datagram: keep listening.
                Ok(_) => {}
                // Any other error could repeat at once and spin this loop:
                // stop listening on this probe (frames still leave from it,
                // and the election timeout still detects a crash).
                Err(e) => {
                    tracing::debug!(error = %e, "leader probe receive failed");
                    return std::future::pending().await;
                }
            }
        }
    }
}

impl Control {
    /// Runs until shutdown or a fatal error; hands back the registry's
    /// keeper, for the group's log to be closed.
    async fn run(
        mut self,
        shutdown: &CancellationToken,
        requests: mpsc::Receiver<CoreRequest>,
    ) -> (Authority, Result<(), LbError>) {
        let result = self.serve(shutdown, requests).await;
        (self.authority, result)
    }

    async fn serve(
        &mut self,
        shutdown: &CancellationToken,
        mut requests: mpsc::Receiver<CoreRequest>,
    ) -> Result<(), LbError> {
        // One byte more than the largest datagram, so an oversized one
        // arrives truncated at that length and decode refuses it as too long.
        let mut buf = vec![0u8; DATAGRAM_BYTES_MAX + 1];
        loop {
            self.follow_members(false).await?;
            self.follow_group_leadership().await?;
            let now = self.now_ms();
            let mut next_ms = self
                .core
                .as_ref()
                .map_or(u64::MAX, |core| core.next_deadline_ms());
            if matches!(self.authority, Authority::Group { .. }) {
                next_ms = next_ms.min(now + LEADERSHIP_POLL_MS);
            }
            let deadline = self.start + Duration::from_millis(next_ms.min(now + IDLE_WAKE_MS));
            let actions = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                received = self.socket.recv_from(&mut buf) => match received {
                    // The source address is deliberately unused: replies go
                    // only to registered addresses.
                    Ok((len, _source)) => self.on_datagram(&buf[..len]),
                    Err(e) if transient(&e) => {
                        tracing::debug!(error = %e, "control socket receive");
                        Vec::new()
                    }
                    Err(e) => return Err(LbError::Receive(e)),
                },
                Some(request) = requests.recv() => self.on_request(request).await?,
                id = Probe::refused(self.probe.as_ref()) => {
                    tracing::info!(server = %id, "the leader's UDP port refused a datagram");
                    // The next frame to it goes out on a fresh socket.
                    self.probe = None;
                    let now = self.now_ms();
                    self.core.as_mut().map_or_else(Vec::new, |core| core.unreachable(now, id))
                }
                () = sleep_until(deadline) => {
                    let now = self.now_ms();
                    self.core.as_mut().map_or_else(Vec::new, |core| core.tick(now))
                }
            };
            self.execute(actions).await?;
            let announce = self.announce_lbs();
            self.execute(announce).await?;
        }
    }

    /// The acting LB of a group tells every registered server the group's
    /// list of LBs when it changed and every [`LBS_ANNOUNCE_MS`], so that
    /// servers send to the LBs there are (DESIGN §3c).
    fn announce_lbs(&mut self) -> Vec<Action> {
        let (Some(core), Authority::Group { peers, .. }) = (&self.core, &self.authority) else {
            self.announced = None;
            return Vec::new();
        };
        let now = self.now_ms();
        let due = self.announced.is_none_or(|(epoch, at)| {
            epoch != peers.epoch || now >= at.saturating_add(LBS_ANNOUNCE_MS)
        });
        if !due {
            return Vec::new();
        }
        self.announced = Some((peers.epoch, now));
        // An LB of a group takes control datagrams on its discovery address.
        let lbs: Vec<SocketAddr> = peers.members.iter().map(|m| m.tcp).collect();
        let term = core.durable().term;
        core.durable()
            .members
            .iter()
            .map(|(id, member)| Action::Send {
                to: *id,
                addr: member.udp,
                term,
                message: frame::Message::Lbs {
                    epoch: peers.epoch,
                    lbs: lbs.clone(),
                },
            })
            .collect()
    }

    /// In a group: makes a core when this LB has come to lead the group (from
    /// the registry every earlier leader committed), and drops it when it no
    /// longer leads. Alone: nothing to do.
    async fn follow_group_leadership(&mut self) -> Result<(), LbError> {
        let Authority::Group { log, leading, .. } = &self.authority else {
            return Ok(());
        };
        let now_leading = log.leading();
        if now_leading == *leading {
            return Ok(());
        }
        if leading.is_some() {
            tracing::info!(term = ?leading, "no longer leads the LB group");
        }
        self.stop_acting();
        let Some(term) = now_leading else {
            return Ok(());
        };
        let Authority::Group { log, leading, .. } = &mut self.authority else {
            unreachable!("an LB alone does not change");
        };
        // A barrier: the leader's first entry of its term committed, every
        // registry an earlier leader committed is applied here.
        let waited = timeout(
            Duration::from_millis(self.core_config.election_timeout_ms),
            log.take_over(term),
        )
        .await;
        match waited {
            Ok(Ok(durable)) => {
                tracing::info!(
                    lb_term = %term,
                    term = %durable.term,
                    leader = %durable.leader,
                    members = durable.members.len(),
                    "leads the LB group: acting on the registry it committed"
                );
                *leading = Some(term);
                self.core = Some(Core::new(self.core_config, durable.clone(), self.now_ms()));
                self.last_logged = durable;
                // The list every earlier leader committed is applied too:
                // the configuration follows it from here.
                self.follow_members(true).await
            }
            // Not yet (its first entry is not committed) or no longer: the
            // next turn looks again.
            Ok(Err(GroupError::Deposed)) | Err(_) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// In a group: follows the LB group's list as this LB has applied it:
    /// the members' addresses to its replica (and while it leads, or with
    /// `retarget`, the configuration to move toward), kept on disk for a
    /// restart. An LB the list no longer has stops once it does not lead
    /// and knows a configuration without it committed: until then the
    /// others may still need its vote (a leader that took itself out leads
    /// until its removal commits; if it steps down before, it stays).
    async fn follow_members(&mut self, retarget: bool) -> Result<(), LbError> {
        let Authority::Group {
            log,
            leading,
            peers,
            list_seen,
            data_dir,
        } = &mut self.authority
        else {
            return Ok(());
        };
        let list = log.members_list();
        let changed = list.is_some() && list != *list_seen;
        if changed {
            let bytes = list.clone().expect("a changed list is some");
            match peers.with_list(&bytes) {
                Ok(next) => {
                    *peers = next;
                    tracing::info!(
                        lbs = peers.members.len(),
                        ids = ?peers.members.iter().map(|m| m.id.0).collect::<Vec<_>>(),
                        "the LB group's list changed"
                    );
                    let dir = data_dir.clone();
                    tokio::task::spawn_blocking(move || join::store_members(&dir, &bytes))
                        .await
                        .map_err(|_| LbError::TaskPanicked)??;
                }
                Err(e) => tracing::error!(error = %e, "keeps the last LB list it could read"),
            }
            *list_seen = list;
        }
        if changed || retarget {
            log.set_members(peers, leading.is_some()).await?;
        }
        if peers.removed()
            && log.leading().is_none()
            && group::removal_committed(&log.view().config(), peers.me)
        {
            return Err(LbError::Removed);
        }
        Ok(())
    }

    /// `add-lb` or `remove-lb` on the leading LB: the group's new list,
    /// committed in its log before the reply; the configuration follows it
    /// ([`Self::follow_members`], once the reply is sent), one change at a
    /// time ([`Peers::plan`]).
    async fn change_lbs(
        &mut self,
        change: LbChange,
    ) -> Result<Result<ServerId, LbChangeError>, LbError> {
        let leader = self.group_leader();
        let Authority::Group { log, peers, .. } = &self.authority else {
            return Ok(Err(LbChangeError::Alone));
        };
        if self.core.is_none() {
            return Ok(Err(LbChangeError::NotLeader(leader)));
        }
        let (next, id) = match peers.plan(change, &log.view().config()) {
            Ok(planned) => planned,
            Err(e) => return Ok(Err(e)),
        };
        let wait =
            Duration::from_millis(PERSIST_WAIT_TIMEOUTS * self.core_config.election_timeout_ms);
        match timeout(wait, log.commit_members(&next)).await {
            Ok(Ok(())) => {}
            Ok(Err(GroupError::Storage)) => return Err(GroupError::Storage.into()),
            Ok(Err(_)) | Err(_) => return Ok(Err(LbChangeError::Unknown)),
        }
        tracing::info!(?change, %id, "the LB group's list committed");
        Ok(Ok(id))
    }

    /// An LB of a group stops acting for the cluster: its core, the LB
    /// term it was made in and its leader probe go together.
    fn stop_acting(&mut self) {
        if let Authority::Group { leading, .. } = &mut self.authority {
            *leading = None;
            self.core = None;
            self.probe = None;
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn on_datagram(&mut self, datagram: &[u8]) -> Vec<Action> {
        let counters = &self.counters;
        Counters::bump(&counters.frames_received);
        let frame = match frame::decode(datagram, &self.cluster.secret) {
            Ok(frame) => frame,
            Err(FrameError::BadMac) => {
                Counters::bump(&counters.frames_bad_mac);
                return Vec::new();
            }
            Err(e) => {
                Counters::bump(&counters.frames_malformed);
                if self.other_versions.first_sight(&e) {
                    tracing::warn!(
                        error = %e,
                        "a server runs another release: upgrade the LB and every server of a group together"
                    );
                } else if !matches!(e, FrameError::UnsupportedVersion(_)) {
                    tracing::debug!(error = %e, "dropped a malformed datagram");
                }
                return Vec::new();
            }
        };
        if frame.header.cluster != self.cluster.id {
            Counters::bump(&counters.frames_other_cluster);
            return Vec::new();
        }
        // The LB elects the first group's leader only.
        if frame.header.to != ServerId::LB || frame.header.group != GroupId::FIRST {
            Counters::bump(&counters.frames_not_for_lb);
            return Vec::new();
        }
        let now = self.now_ms();
        let Some(core) = self.core.as_mut() else {
            // A follower of the LB group: the leader acts on these.
            Counters::bump(&counters.frames_not_leading);
            return Vec::new();
        };
        core.receive(now, &frame.header, frame.message)
    }

    async fn on_request(&mut self, request: CoreRequest) -> Result<Vec<Action>, LbError> {
        Ok(match request {
            CoreRequest::Lbs(reply) => {
                let list = match &self.authority {
                    Authority::Alone(_) => Vec::new(),
                    Authority::Group { peers, .. } => peers.encode(),
                };
                let _ = reply.send(list);
                Vec::new()
            }
            CoreRequest::ChangeLbs(change, reply) => {
                let answer = self.change_lbs(change).await?;
                let _ = reply.send(answer);
                // After the reply: a leader that took itself out may find
                // its removal committed here and stop ([`LbError::Removed`]);
                // its connection still writes the reply while it drains.
                self.follow_members(false).await?;
                Vec::new()
            }
            CoreRequest::View(reply) => {
                let view = match (&self.core, &self.authority) {
                    (Some(core), _) => core.view(self.now_ms()),
                    // A follower answers from the registry as it applied it.
                    (None, Authority::Group { log, .. }) => match log.registry() {
                        Ok(durable) => Core::registry_view(&durable),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the applied registry");
                            Core::registry_view(&DurableState::default())
                        }
                    },
                    (None, Authority::Alone(_)) => unreachable!("an LB alone always acts"),
                };
                // The asker may have gone; nothing to do then.
                let _ = reply.send((self.standing(), view));
                Vec::new()
            }
            CoreRequest::Remove(id, reply) => {
                let (answer, actions) = match self.core.as_mut() {
                    None => (Err(RemoveError::NotLeader(self.group_leader())), Vec::new()),
                    Some(core) => match core.remove_server(id) {
                        Ok(actions) => (Ok(()), actions),
                        Err(e) => (Err(e), Vec::new()),
                    },
                };
                let _ = reply.send(answer);
                actions
            }
        })
    }

    /// The discovery address of the LB that leads this LB's group, if known.
    fn group_leader(&self) -> Option<SocketAddr> {
        match &self.authority {
            Authority::Alone(_) => None,
            Authority::Group { log, .. } => log.view().leader_tcp(),
        }
    }

    fn standing(&self) -> Standing {
        match &self.authority {
            Authority::Alone(_) => Standing::alone(),
            Authority::Group { log, peers, .. } => {
                let view = log.view();
                Standing {
                    leads: self.core.is_some(),
                    id: view.id.load(Ordering::Relaxed),
                    lbs: peers.members.len(),
                    lb_term: view.term.load(Ordering::Relaxed),
                    lb_leader: view.leader_tcp(),
                    lb_last_index: view.last_index.load(Ordering::Relaxed),
                    lb_commit_index: view.commit_index.load(Ordering::Relaxed),
                    peers: peers.members.iter().map(|m| (m.id.0, m.tcp)).collect(),
                    voters: view.config().voters,
                }
            }
        }
    }

    /// Carries out the core's actions in order; a `Persist` is durable
    /// before the next action starts.
    async fn execute(&mut self, actions: Vec<Action>) -> Result<(), LbError> {
        for action in actions {
            match action {
                Action::Persist(state) => {
                    match &mut self.authority {
                        Authority::Alone(registry) => {
                            let registry = registry.clone();
                            let saved = state.clone();
                            tokio::task::spawn_blocking(move || registry.save(&saved))
                                .await
                                .map_err(|_| LbError::TaskPanicked)??;
                        }
                        Authority::Group { log, leading, .. } => {
                            // A leader cut off from the other LBs steps down
                            // within an election timeout, failing the write;
                            // the bound is for anything else.
                            let wait = Duration::from_millis(
                                PERSIST_WAIT_TIMEOUTS * self.core_config.election_timeout_ms,
                            );
                            let persisted = timeout(wait, log.persist(&state))
                                .await
                                .unwrap_or(Err(GroupError::Deposed));
                            match persisted {
                                Ok(()) => {}
                                Err(GroupError::Deposed) => {
                                    // Not committed (or not known to be): act on
                                    // none of it, nor on anything after it.
                                    tracing::info!(lb_term = ?leading, "deposed while committing the registry: stops acting");
                                    self.stop_acting();
                                    return Ok(());
                                }
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                    if (state.term, state.leader)
                        != (self.last_logged.term, self.last_logged.leader)
                    {
                        tracing::info!(term = %state.term, leader = %state.leader, "term or leader changed");
                    }
                    self.last_logged = state;
                }
                Action::Send {
                    to,
                    addr,
                    term,
                    message,
                } => {
                    let frame = Frame {
                        header: Header {
                            cluster: self.cluster.id,
                            // The LB elects the first group's leader.
                            group: GroupId::FIRST,
                            from: ServerId::LB,
                            to,
                            term,
                        },
                        message,
                    };
                    self.out.clear();
                    if let Err(e) = frame::encode(&frame, &self.cluster.secret, &mut self.out) {
                        // The registry's MEMBERS_MAX keeps every message the
                        // core makes under the datagram limit.
                        tracing::error!(error = %e, "cannot encode a control frame");
                        Counters::bump(&self.counters.frames_send_failed);
                        continue;
                    }
                    let to_leader = self.core.as_ref().and_then(Core::leader) == Some(to);
                    let sent = if to_leader {
                        self.ensure_probe(to, addr).await;
                        match &self.probe {
                            Some(probe) => probe.socket.send(&self.out).await,
                            None => self.socket.send_to(&self.out, addr).await,
                        }
                    } else {
                        self.socket.send_to(&self.out, addr).await
                    };
                    match sent {
                        Ok(_) => Counters::bump(&self.counters.frames_sent),
                        Err(e) => {
                            // UDP: the protocol resends; a failed send is a
                            // lost datagram.
                            tracing::debug!(error = %e, %addr, "send failed");
                            Counters::bump(&self.counters.frames_send_failed);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Control {
    /// Makes the probe connected to `to` at `addr`, anew when the leader or
    /// its address changed. Without one (no socket could be made) frames
    /// leave from the control socket, and only the timeout detects a crash.
    async fn ensure_probe(&mut self, to: ServerId, addr: SocketAddr) {
        if self
            .probe
            .as_ref()
            .is_some_and(|p| p.to == to && p.addr == addr)
        {
            return;
        }
        self.probe = None;
        let Ok(control) = self.socket.local_addr() else {
            return;
        };
        let local = SocketAddr::new(control.ip(), 0);
        let socket = match UdpSocket::bind(local).await {
            Ok(socket) => socket,
            Err(e) => {
                tracing::debug!(error = %e, "cannot bind the leader probe");
                return;
            }
        };
        if let Err(e) = socket.connect(addr).await {
            tracing::debug!(error = %e, %addr, "cannot connect the leader probe");
            return;
        }
        self.probe = Some(Probe { to, addr, socket });
    }
}

/// Receive errors that say nothing about the socket itself (an ICMP error
/// for an earlier send, an interrupted call).
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// What every discovery connection shares.
#[derive(Clone)]
struct Discovery {
    requests: mpsc::Sender<CoreRequest>,
    counters: Arc<Counters>,
    /// The cluster secret, which commands that change the cluster prove.
    secret: [u8; SECRET_BYTES],
}

async fn accept_loop(
    listener: TcpListener,
    shared: Discovery,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather
                // than spin on an error that persists.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)) => continue,
                }
            }
        };
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                tracker.spawn(serve_connection(
                    stream,
                    shared.clone(),
                    shutdown.clone(),
                    slot,
                ));
            }
            Err(_) => {
                Counters::bump(&shared.counters.connections_refused);
                // Best effort and without waiting: the socket buffer of a
                // fresh connection takes this line.
                let _ = stream.try_write(b"ERROR Too many open connections\r\n");
            }
        }
    }
}

/// Pause after a failed accept.
const ACCEPT_BACKOFF_MS: u64 = 50;

/// Serves one discovery connection until the client leaves, idles out, or
/// the LB shuts down.
async fn serve_connection(
    mut stream: TcpStream,
    shared: Discovery,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let idle = Duration::from_millis(CONNECTION_IDLE_MS);
    let mut input = BytesMut::with_capacity(2 * LINE_BYTES_MAX);
    let mut output = BytesMut::new();
    let mut chunk = [0u8; LINE_BYTES_MAX];
    // After an overlong line: drop bytes until its newline.
    let mut skipping = false;
    // The challenge handed out last and not used yet.
    let mut challenge = None;
    loop {
        loop {
            if skipping {
                let (drop, done) = discovery::skip_line(&input);
                input.advance(drop);
                if !done {
                    break;
                }
                skipping = false;
            }
            match discovery::parse(&input, LINE_BYTES_MAX) {
                Parsed::Incomplete => break,
                Parsed::TooLong => {
                    discovery::encode_line_too_long(&mut output);
                    skipping = true;
                }
                Parsed::Unknown { consumed } => {
                    input.advance(consumed);
                    discovery::encode_error(&mut output);
                }
                Parsed::Request { request, consumed } => {
                    input.advance(consumed);
                    if !answer(request, &shared, &mut challenge, &mut output).await {
                        return;
                    }
                }
            }
        }
        if !output.is_empty() {
            match timeout(idle, stream.write_all(&output)).await {
                Ok(Ok(())) => output.clear(),
                _ => return,
            }
        }
        let read = tokio::select! {
            () = shutdown.cancelled() => return,
            read = timeout(idle, stream.read(&mut chunk)) => read,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => input.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Asks the control task and encodes the reply; false if the LB is going
/// away. `challenge` is the connection's outstanding one.
async fn answer(
    request: Request,
    shared: &Discovery,
    challenge: &mut Option<[u8; CHALLENGE_BYTES]>,
    output: &mut BytesMut,
) -> bool {
    match request {
        Request::GetServers | Request::Stats => {
            let Some((standing, view)) = ask(shared, CoreRequest::View).await else {
                return false;
            };
            if request == Request::Stats {
                discovery::encode_stats(&standing, &view, &shared.counters.snapshot(), output);
            } else {
                discovery::encode_servers(&view, output);
            }
        }
        Request::Challenge => {
            // The OS's RNG: a challenge must not be predictable.
            let mut fresh = [0u8; CHALLENGE_BYTES];
            rand::rngs::OsRng.fill_bytes(&mut fresh);
            *challenge = Some(fresh);
            discovery::encode_challenge(&fresh, output);
        }
        Request::RemoveServer { id, proof } => {
            let command = discovery::remove_server_command(id);
            if !admit(shared, challenge, proof, &command, output) {
                return true;
            }
            let Some(result) = ask(shared, |tx| CoreRequest::Remove(id, tx)).await else {
                return false;
            };
            discovery::encode_remove(result, output);
        }
        Request::Lbs => {
            let Some(list) = ask(shared, CoreRequest::Lbs).await else {
                return false;
            };
            discovery::encode_lbs(&list, output);
        }
        Request::ChangeLbs { change, proof } => {
            if !admit(shared, challenge, proof, &change.command(), output) {
                return true;
            }
            let Some(result) = ask(shared, |tx| CoreRequest::ChangeLbs(change, tx)).await else {
                return false;
            };
            discovery::encode_lb_change(result, output);
        }
    }
    true
}

/// Asks the control task and waits for its answer; `None` if the LB is
/// going away.
async fn ask<T>(
    shared: &Discovery,
    request: impl FnOnce(oneshot::Sender<T>) -> CoreRequest,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    shared.requests.send(request(tx)).await.ok()?;
    rx.await.ok()
}

/// Whether a command that changes the cluster (its words `command`)
/// carried a valid proof for the connection's challenge, which it uses up;
/// if not, the refusal is counted and written to `output`.
fn admit(
    shared: &Discovery,
    challenge: &mut Option<[u8; CHALLENGE_BYTES]>,
    proof: discovery::Proof,
    command: &str,
    output: &mut BytesMut,
) -> bool {
    match discovery::check_proof(proof, challenge.take(), &shared.secret, command) {
        Ok(()) => {
            Counters::bump(&shared.counters.admin_accepted);
            true
        }
        Err(why) => {
            Counters::bump(&shared.counters.admin_refused);
            tracing::warn!(
                command,
                ?why,
                "refused a command that changes the cluster without a valid proof"
            );
            discovery::encode_unauthenticated(why, output);
            false
        }
    }
}
