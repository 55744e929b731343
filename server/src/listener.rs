//! The front door (TCP, or a Unix socket with `-s`): binds, accepts,
//! enforces the connection limit (`-c`), and runs the one shutdown path: on
//! SIGTERM or SIGINT stop accepting, let connections answer what they
//! already received, sync the log, return.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use data::limits::Limits;
use data::protocol::reply::errors;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::commit::{self, CommitConfig};
use crate::config::Config;
use crate::connection::Connection;
use crate::driver;
use crate::forward::LeaderLink;
use crate::memory::{MemoryLimit, WriteBudget};
use crate::recovery::{self, RecoveryError};
use crate::stats::Stats;
use crate::storage::StorageError;
use crate::tls::{ClientStream, Tls};
use crate::Backend;
use crate::Shared;

/// How long connections get to finish in-flight requests at shutdown.
pub const SHUTDOWN_DEADLINE_MS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on the Unix socket {path}: {source}")]
    BindUnix {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// `-s` with `--lb`: a group's members reach each other over TCP.
    #[error("a Unix socket (-s) serves a server alone; a server of a group (--lb) listens on TCP")]
    UnixInGroup,
    #[error("log write failed: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// A thread of the server panicked: `what` names it.
    #[error("the {what} thread panicked")]
    Panicked { what: &'static str },
    #[error(transparent)]
    Cluster(#[from] driver::ClusterError),
    #[error(transparent)]
    DataDir(#[from] crate::storage::DirLockError),
    #[error(transparent)]
    AuthFile(#[from] crate::auth::AuthFileError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Where a server takes connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listening {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listening::Tcp(addr) => write!(f, "{addr}"),
            Listening::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The bound listener.
enum FrontDoor {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// An accepted connection, before TLS.
enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl FrontDoor {
    async fn bind(config: &Config) -> Result<(FrontDoor, Listening), ServerError> {
        let Some(unix) = &config.unix_socket else {
            let addr = SocketAddr::new(config.listen, config.port);
            let bind_error = |source| ServerError::Bind { addr, source };
            let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
            let local = listener.local_addr().map_err(bind_error)?;
            return Ok((FrontDoor::Tcp(listener), Listening::Tcp(local)));
        };
        if config.cluster.is_some() {
            return Err(ServerError::UnixInGroup);
        }
        let bind_error = |source| ServerError::BindUnix {
            path: unix.path.clone(),
            source,
        };
        // As memcached: a socket file left by an earlier run is replaced;
        // any other file is not touched (the bind then fails).
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if std::fs::symlink_metadata(&unix.path).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(&unix.path).map_err(bind_error)?;
        }
        let listener = UnixListener::bind(&unix.path).map_err(bind_error)?;
        std::fs::set_permissions(
            &unix.path,
            std::fs::Permissions::from_mode(unix.mask & 0o777),
        )
        .map_err(bind_error)?;
        Ok((
            FrontDoor::Unix(listener),
            Listening::Unix(unix.path.clone()),
        ))
    }

    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            FrontDoor::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(Accepted::Tcp(stream))
            }
            FrontDoor::Unix(listener) => Ok(Accepted::Unix(listener.accept().await?.0)),
        }
    }
}

/// Runs a server until `shutdown` is cancelled. Calls `ready` with where it
/// listens once it accepts connections.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    ready: impl FnOnce(&Listening),
) -> Result<(), ServerError> {
    // Read first: a server that cannot tell its users does not start.
    let auth = Auth::load(
        config.auth_file.as_deref(),
        config.sasl_pwdb.as_deref(),
        config.cluster.as_ref().map(|c| c.cluster.secret),
    )?;
    let tls = config.tls.clone().map(Tls::load).transpose()?.map(Arc::new);
    // Held until this function returns, after the last write is synced.
    let _data_dir_lock = crate::storage::lock_dir(&config.data_dir)?;
    let (listener, listening) = FrontDoor::bind(&config).await?;
    // A group's member listens on TCP (checked by the bind above).
    let local = match &listening {
        Listening::Tcp(addr) => *addr,
        Listening::Unix(_) => SocketAddr::new(config.listen, 0),
    };
    let (shared, backend, worker) = start_backend(&config, local, auth, tls).await?;
    ready(&listening);
    if shared.auth.required() || shared.tls.is_some() {
        tokio::spawn(reload_on_sighup(shared.clone(), shutdown.clone()));
    }

    let reclaimer = tokio::spawn(crate::reclaim::run(
        shared.clone(),
        backend.clone(),
        shutdown.clone(),
    ));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                // Out of file descriptors and the like: keep serving the
                // connections we have and try again shortly.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let stats = &shared.stats;
        if stats.curr_connections.load(Relaxed) as usize >= config.connections_max {
            Stats::bump(&stats.counters.rejected_connections);
            match stream {
                Accepted::Tcp(stream) => tokio::spawn(reject(stream)),
                Accepted::Unix(stream) => tokio::spawn(reject(stream)),
            };
            continue;
        }
        Stats::bump(&stats.counters.total_connections);
        stats.curr_connections.fetch_add(1, Relaxed);
        let shared = shared.clone();
        let backend = backend.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            // The handshake runs in the connection's own task, so a slow
            // client holds up no one else.
            let stream = match (stream, &shared.tls) {
                (Accepted::Tcp(stream), None) => Some(ClientStream::Plain(stream)),
                (Accepted::Tcp(stream), Some(tls)) => tls.accept(stream).await,
                (Accepted::Unix(stream), _) => Some(ClientStream::Unix(stream)),
            };
            if let Some(stream) = stream {
                Connection::new(stream, shared.clone(), backend)
                    .run(shutdown)
                    .await;
            }
            shared.stats.curr_connections.fetch_sub(1, Relaxed);
        });
    }

    drop(listener);
    if let Listening::Unix(path) = &listening {
        let _ = std::fs::remove_file(path);
    }
    connections.close();
    if tokio::time::timeout(
        Duration::from_millis(SHUTDOWN_DEADLINE_MS),
        connections.wait(),
    )
    .await
    .is_err()
    {
        // Every acknowledged write is already on disk (a reply follows its
        // fsync), so leaving now loses nothing a client was promised.
        tracing::warn!("connections still busy at the shutdown deadline; leaving them");
        return Ok(());
    }
    // The commit thread (or replication driver) ends once every handle is
    // gone: it drains its queue and syncs the log. The reclaimer holds one
    // and stops on the shutdown token.
    let _ = reclaimer.await;
    drop(backend);
    drop(shared);
    crate::group_log::join_worker(worker, "write path").await
}

/// Reads the users' files and the certificates again on each SIGHUP (as
/// memcached reloads its authfile and certificates), until shutdown.
async fn reload_on_sighup(shared: Arc<Shared>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install a SIGHUP handler; files are read at start only");
        return;
    };
    loop {
        tokio::select! {
            got = hangup.recv() => if got.is_none() { return },
            () = shutdown.cancelled() => return,
        }
        if let Some(tls) = &shared.tls {
            match tls.refresh() {
                Ok(()) => tracing::info!("certificates reloaded"),
                Err(error) => {
                    tracing::error!(%error, "certificates not reloaded; those loaded before stay");
                }
            }
        }
        for (path, result) in shared.auth.reload() {
            match result {
                Ok(users) => tracing::info!(path = %path.display(), users, "users reloaded"),
                Err(error) => {
                    tracing::error!(%error, "users not reloaded; those loaded before stay");
                }
            }
        }
    }
}

/// Tells a client over the connection limit why, then hangs up.
async fn reject(mut stream: impl AsyncWrite + Unpin) {
    let _ = stream
        .write_all(errors::TOO_MANY_CONNECTIONS.as_bytes())
        .await;
    let _ = stream.shutdown().await;
}

/// Recovers the data directory and starts the write path: the commit
/// pipeline for a group of one, or the replication driver with `--lb`.
async fn start_backend(
    config: &Config,
    local: SocketAddr,
    auth: Auth,
    tls: Option<Arc<Tls>>,
) -> Result<
    (
        Arc<Shared>,
        Backend,
        std::thread::JoinHandle<Result<(), StorageError>>,
    ),
    ServerError,
> {
    let stats = Arc::new(Stats::default());
    let limits = Limits {
        item_bytes_max: config.item_bytes_max,
    };
    // This server hosts the first group (route::group_of); its files live
    // in its own directory, moved there from the layout before groups.
    let group_dir = {
        let data_dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            crate::storage::layout::open_group(&data_dir, crate::route::FIRST_GROUP)
        })
        .await
        .map_err(|_| ServerError::Panicked {
            what: "data directory",
        })??
    };
    let mut blocking_config = config.clone();
    blocking_config.data_dir = group_dir.clone();
    match config.cluster.clone() {
        None => {
            let recovered = tokio::task::spawn_blocking(move || {
                let c = blocking_config;
                recovery::recover(&c.data_dir, c.item_bytes_max, c.segment_bytes_max())
            })
            .await
            .map_err(|_| ServerError::Panicked { what: "recovery" })??;
            let state = Arc::new(RwLock::new(recovered.state));
            let memory = Arc::new(MemoryLimit::new(config.memory_limit_bytes));
            let (committer, worker) = commit::start(
                recovered.log,
                state.clone(),
                stats.clone(),
                CommitConfig {
                    data_dir: group_dir.clone(),
                    snapshot_log_bytes: config.snapshot_log_bytes,
                },
            );
            let shared = Arc::new(Shared {
                config: config.clone(),
                limits,
                state,
                stats,
                memory,
                write_budget: WriteBudget::default(),
                leader_link: LeaderLink::new(None, None),
                auth,
                tls,
                access: crate::access::AccessTable::new(),
            });
            Ok((shared, Backend::Single(committer), worker))
        }
        Some(settings) => {
            let files = crate::group_log::GroupFiles {
                item_bytes_max: config.item_bytes_max,
                segment_bytes_max: config.segment_bytes_max(),
                snapshot_log_bytes: config.snapshot_log_bytes,
                memory_limit_bytes: config.memory_limit_bytes,
            };
            let secret = settings.cluster.secret;
            let group =
                crate::group_log::open(settings, group_dir, local, files, stats.clone()).await?;
            let shared = Arc::new(Shared {
                config: config.clone(),
                limits,
                state: group.state,
                stats,
                memory: group.memory,
                write_budget: WriteBudget::default(),
                leader_link: LeaderLink::new(Some(secret), tls.clone()),
                auth,
                tls,
                access: crate::access::AccessTable::new(),
            });
            Ok((shared, Backend::Cluster(group.handle), group.worker))
        }
    }
}
