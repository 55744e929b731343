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
use data::protocol::client::{encode_forwarder, scan_response, Expect, Status};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections kept to the leader at most.
pub const POOL_CONNECTIONS_MAX: usize = 64;
/// A forwarded request gets this long for its reply.
pub const FORWARD_TIMEOUT_MS: u64 = 5_000;
/// A relayed reply is at most this large (a multi-get of max-size values
/// can be big; beyond this the follower gives up rather than buffer it).
pub const FORWARD_REPLY_BYTES_MAX: usize = 256 * 1024 * 1024;

const BARRIER: &[u8] = b"version\r\n";

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
