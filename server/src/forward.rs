//! Forwarding: a follower relays a client's request to the leader over a
//! pooled TCP connection and hands back the leader's reply bytes verbatim
//! (DESIGN §2: any server accepts any command).
//!
//! The one owner of the server's outgoing memcached connections. Requests
//! go out as the client sent them; a `noreply` request is followed by a
//! `version` so that the follower knows when the leader has executed it (the
//! next request on the client's connection must see its effect). A new
//! connection starts with `forwarder`, so that the leader leaves counting
//! these requests in `stats` to this server, which received them.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use data::frame::Role;
use data::protocol::client::{encode_forwarder, scan_response, Expect, Status};
use data::protocol::reply::errors;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::driver::ClusterView;

/// Idle connections kept to the leader at most.
pub const POOL_CONNECTIONS_MAX: usize = 64;
/// A forwarded request gets this long for its reply.
pub const FORWARD_TIMEOUT_MS: u64 = 5_000;
/// A relayed reply is at most this large (a multi-get of max-size values
/// can be big; beyond this the follower gives up rather than buffer it).
pub const FORWARD_REPLY_BYTES_MAX: usize = 256 * 1024 * 1024;

/// How long a follower waits for a reachable leader before it answers
/// `SERVER_ERROR no leader available`: a failover takes about a second.
pub const FORWARD_FAILOVER_WAIT_MS: u64 = 3_000;
/// How often it looks for the next leader meanwhile.
const FORWARD_RETRY_MS: u64 = 20;

const BARRIER: &[u8] = b"version\r\n";

/// What became of a request relayed to the leader.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// The leader's reply (empty for a `noreply` request).
    Reply(Bytes),
    /// No leader answered in time, or the one that had it failed: the
    /// error line for the client.
    Failed(&'static str),
    /// This server was named leader meanwhile: it serves the request.
    BecameLeader,
}

#[derive(Debug, Error)]
pub enum ForwardError {
    #[error("cannot connect to leader {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("leader {0} unreachable: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("leader {0} did not answer in time")]
    Timeout(SocketAddr),
    #[error("leader {0} sent a reply that does not parse")]
    BadReply(SocketAddr),
}

impl ForwardError {
    /// The request cannot have reached the leader, so sending it again
    /// cannot execute it twice.
    pub fn never_sent(&self) -> bool {
        matches!(self, ForwardError::Connect(..))
    }
}

/// Pooled connections to the current leader.
#[derive(Default)]
pub struct LeaderLink {
    idle: Mutex<Vec<(SocketAddr, TcpStream)>>,
}

impl LeaderLink {
    /// Relays one request to the group's leader as `view` knows it. During
    /// a failover it waits (bounded, [`FORWARD_FAILOVER_WAIT_MS`]) for the
    /// next leader rather than failing at once, so plain memcached clients
    /// ride through it: a request that never reached a leader is sent again,
    /// and a read (`read_only`) is repeated even if it did.
    pub async fn relay(
        &self,
        view: &ClusterView,
        raw: &[u8],
        expect: Expect,
        noreply: bool,
        read_only: bool,
    ) -> Relayed {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(FORWARD_FAILOVER_WAIT_MS);
        let mut failed_leader = None;
        loop {
            if view.role() == Role::Leader {
                return Relayed::BecameLeader;
            }
            let leader = view.leader_tcp().filter(|l| Some(*l) != failed_leader);
            if let Some(leader) = leader {
                match self.forward(leader, raw, expect, noreply).await {
                    Ok(reply) => return Relayed::Reply(reply),
                    Err(error) if read_only || error.never_sent() => {
                        tracing::debug!(%error, "forwarding failed; waiting for a leader");
                        failed_leader = Some(leader);
                    }
                    // It may have been executed before the leader failed.
                    Err(_) => return Relayed::Failed(errors::OUTCOME_UNKNOWN),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Relayed::Failed(errors::NO_LEADER);
            }
            tokio::time::sleep(Duration::from_millis(FORWARD_RETRY_MS)).await;
        }
    }

    /// Sends `raw` (one complete request) to `leader` and returns its reply:
    /// what the leader wrote for it, or nothing for a `noreply` request.
    pub async fn forward(
        &self,
        leader: SocketAddr,
        raw: &[u8],
        expect: Expect,
        noreply: bool,
    ) -> Result<Bytes, ForwardError> {
        let (mut stream, mut hello) = match self.take(leader) {
            Some(stream) => (stream, false),
            None => {
                let stream = TcpStream::connect(leader)
                    .await
                    .map_err(|e| ForwardError::Connect(leader, e))?;
                (stream, true)
            }
        };
        let _ = stream.set_nodelay(true);
        let exchange = async {
            let mut request = BytesMut::with_capacity(raw.len() + BARRIER.len() + 16);
            if hello {
                encode_forwarder(&mut request);
            }
            request.extend_from_slice(raw);
            if noreply {
                request.extend_from_slice(BARRIER);
            }
            stream
                .write_all(&request)
                .await
                .map_err(|e| ForwardError::Io(leader, e))?;
            let mut buf = BytesMut::with_capacity(1024);
            loop {
                if hello {
                    match scan_response(&buf, Expect::Line)
                        .map_err(|_| ForwardError::BadReply(leader))?
                    {
                        Some((Status::Ok, len)) => {
                            let _ = buf.split_to(len);
                            hello = false;
                            continue;
                        }
                        Some(_) => return Err(ForwardError::BadReply(leader)),
                        None => {}
                    }
                }
                let done = if hello {
                    None
                } else if noreply {
                    scan_response(&buf, Expect::Line)
                        .map_err(|_| ForwardError::BadReply(leader))?
                        .map(|(_, len)| (0, len))
                } else {
                    scan_response(&buf, expect)
                        .map_err(|_| ForwardError::BadReply(leader))?
                        .map(|(_, len)| (len, len))
                };
                if let Some((keep, consumed)) = done {
                    if consumed != buf.len() {
                        return Err(ForwardError::BadReply(leader));
                    }
                    return Ok(buf.split_to(keep).freeze());
                }
                if buf.len() > FORWARD_REPLY_BYTES_MAX {
                    return Err(ForwardError::BadReply(leader));
                }
                let n = stream
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| ForwardError::Io(leader, e))?;
                if n == 0 {
                    let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                    return Err(ForwardError::Io(leader, eof));
                }
            }
        };
        let reply = tokio::time::timeout(Duration::from_millis(FORWARD_TIMEOUT_MS), exchange)
            .await
            .map_err(|_| ForwardError::Timeout(leader))??;
        self.put(leader, stream);
        Ok(reply)
    }

    fn take(&self, leader: SocketAddr) -> Option<TcpStream> {
        let mut idle = self
            .idle
            .lock()
            .expect("pool lock is never held across a panic");
        // Connections to a former leader are of no use any more.
        idle.retain(|(addr, _)| *addr == leader);
        idle.pop().map(|(_, stream)| stream)
    }

    fn put(&self, leader: SocketAddr, stream: TcpStream) {
        let mut idle = self
            .idle
            .lock()
            .expect("pool lock is never held across a panic");
        if idle.len() < POOL_CONNECTIONS_MAX {
            idle.push((leader, stream));
        }
    }
}
