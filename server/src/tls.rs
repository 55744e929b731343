//! TLS (`-Z`, DESIGN §5a "TLS"), with rustls: the server's side of client
//! connections, and the client's side of a follower's forwarding lanes to
//! its leader. Certificates are read at start and again on SIGHUP or
//! `refresh_certs`; a refresh that fails keeps the ones loaded before it.
//!
//! The settings are memcached's `-o ssl_*` options: `ssl_chain_cert`,
//! `ssl_key`, `ssl_ca_cert`, `ssl_verify_mode` (0 none, 1 request a client
//! certificate, 2 require one, 3 require one once: as 2 here, since there
//! is no renegotiation in rustls) and `ssl_min_version` (rustls speaks TLS
//! 1.2 and 1.3 only, so 0 and 1 mean 1.2).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{TlsSettings, VerifyMode};

/// A TLS handshake gets this long before the connection is dropped.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Why certificates could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the certificates or key were refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificates cannot be checked: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("ssl_verify_mode {0} needs ssl_ca_cert, the authorities client certificates are checked against")]
    NoCa(u8),
}

/// The configurations built from the files, swapped whole on a refresh.
struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// A server's TLS: its configurations and what `stats` shows of it.
pub struct Tls {
    settings: TlsSettings,
    configs: RwLock<Configs>,
    refreshed: Mutex<Instant>,
    pub handshake_errors: AtomicU64,
    /// Handshakes that made a new session (not a resumed one).
    pub new_sessions: AtomicU64,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the files `settings` names.
    pub fn load(settings: TlsSettings) -> Result<Tls, TlsError> {
        let configs = build(&settings)?;
        Ok(Tls {
            settings,
            configs: RwLock::new(configs),
            refreshed: Mutex::new(Instant::now()),
            handshake_errors: AtomicU64::new(0),
            new_sessions: AtomicU64::new(0),
        })
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Reads the files again (`refresh_certs`, SIGHUP); on failure the
    /// certificates loaded before stay.
    pub fn refresh(&self) -> Result<(), TlsError> {
        let configs = build(&self.settings)?;
        *self.configs.write().expect("tls lock poisoned") = configs;
        *self.refreshed.lock().expect("tls lock poisoned") = Instant::now();
        Ok(())
    }

    /// The configuration a forwarding lane connects with (what this
    /// server trusts for its peers, and its own certificate).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.configs
            .read()
            .expect("tls lock poisoned")
            .client
            .clone()
    }

    pub fn seconds_since_refresh(&self) -> u64 {
        self.refreshed
            .lock()
            .expect("tls lock poisoned")
            .elapsed()
            .as_secs()
    }

    /// Runs the server's side of a handshake on an accepted connection,
    /// counting what `stats` shows; `None` when it failed or timed out.
    pub async fn accept(&self, stream: TcpStream) -> Option<ClientStream> {
        let config = self
            .configs
            .read()
            .expect("tls lock poisoned")
            .server
            .clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let timeout = std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                if tls.get_ref().1.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
                    self.new_sessions.fetch_add(1, Relaxed);
                }
                Some(ClientStream::Tls(Box::new(tls.into())))
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "TLS handshake failed");
                self.handshake_errors.fetch_add(1, Relaxed);
                None
            }
            Err(_) => {
                self.handshake_errors.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// A forwarding lane's side of a handshake with the leader at `leader`
    /// (its certificate must name that address).
    pub async fn connect(
        &self,
        stream: TcpStream,
        leader: std::net::SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let config = self
            .configs
            .read()
            .expect("tls lock poisoned")
            .client
            .clone();
        let name = rustls_pki_types::ServerName::IpAddress(leader.ip().into());
        tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
    }
}

/// ring's algorithms (rustls deprecates its provider for lacking the
/// post-quantum key exchange, which memcached's OpenSSL build does not
/// offer by default either; aws-lc-rs, which has it, needs a C build step).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn roots(certs: Vec<CertificateDer<'static>>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// Both configurations, from the files as they are now.
fn build(settings: &TlsSettings) -> Result<Configs, TlsError> {
    let chain = certificates(&settings.chain_cert)?;
    let key_path = settings.key.as_deref().unwrap_or(&settings.chain_cert);
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsError::Read {
        path: key_path.to_path_buf(),
        source,
    })?;
    let ca = settings.ca_cert.as_deref().map(certificates).transpose()?;
    let versions: &[&rustls::SupportedProtocolVersion] = if settings.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    let server =
        ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let server = match (settings.verify_mode, &ca) {
        (VerifyMode::None, _) => server.with_no_client_auth(),
        (mode, Some(ca)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca.clone())?),
                provider(),
            );
            let verifier = if mode == VerifyMode::Request {
                verifier.allow_unauthenticated().build()?
            } else {
                verifier.build()?
            };
            server.with_client_cert_verifier(verifier)
        }
        (mode, None) => return Err(TlsError::NoCa(mode.number())),
    };
    let server = server.with_single_cert(chain.clone(), key.clone_key())?;
    // A lane trusts the authorities of ssl_ca_cert, else the chain file's
    // own certificates, and shows this server's certificate when asked.
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_root_certificates(roots(ca.unwrap_or_else(|| chain.clone()))?)
        .with_client_auth_cert(chain, key)?;
    Ok(Configs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// A client connection's byte stream: plain TCP, or TLS over it.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    /// `-s`: a Unix socket (plain, as memcached's).
    Unix(tokio::net::UnixStream),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
