//! Forwarding: a follower relays its clients' requests to the leader and
//! hands back the leader's reply bytes verbatim (DESIGN §2: any server
//! accepts any command).
//!
//! The one owner of the server's outgoing memcached connections. They are
//! a few long-lived *lanes* ([`LANES`]), each one TCP connection to the
//! leader that carries the requests of every client connection pinned to
//! it, pipelined: requests go out in batches as they arrive, without waiting
//! for the replies before them, and the leader answers a connection's
//! requests in the order it received them, so each reply is matched to its
//! request by position. A client connection stays on one lane for its life,
//! so its requests reach the leader in the order it sent them, and a reply
//! comes back to it through a channel of its own ([`LeaderLink::submit`]).
//!
//! A `noreply` request has no reply to wait for: it is done once the reply
//! to a later request on the lane arrives. A batch that ends with one gets
//! a `version` after it (the barrier), so that its requests are known to
//! have been executed within one round trip, whatever their number: the
//! next request on the client's connection must see their effect.
//!
//! Every queue is bounded: requests waiting for a lane ([`LANE_WAITING_MAX`]),
//! requests in flight on one ([`LANE_IN_FLIGHT_MAX`]), and the request
//! bytes in flight over all lanes ([`FORWARD_BYTES_IN_FLIGHT_MAX`]). A client
//! that reaches a bound waits before its next request is read: a client
//! flooding a follower slows down rather than growing its memory.
//!
//! Each lane proves the cluster secret when it connects (`forwarder`: a
//! challenge from the leader, then a keyed hash of it), so that the
//! leader serves it without a client's login (DESIGN §5a
//! "Authentication"), and an open port is no way around the leader's
//! authentication.
//!
//! Failover (in `lane`): a request that cannot have reached a leader is
//! sent again to the next one, as is a read; a write that may have reached
//! one gets `outcome unknown`. While there is no leader, a request waits
//! [`FORWARD_FAILOVER_WAIT_MS`], then gets `no leader available`. A lane
//! moves to a new leader once everything it sent the former one is
//! answered, so a client's requests keep their order across the change.
//! When this server becomes the leader, a lane sends what it still holds
//! to this server's own port, where it is served like any request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use data::frame::SECRET_BYTES;
use data::protocol::client::Expect;
use data::protocol::reply::errors;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::{Duration, Instant};

use crate::driver::ClusterView;
use crate::tls::Tls;

mod lane;
#[cfg(test)]
mod tests;

use lane::{Job, Lane};

/// Lanes (long-lived connections to the leader) a server forwards over.
/// Each is served by one task; a few let the leader work on several
/// batches at once (its connections run in parallel), and a client's
/// requests stay on one.
pub const LANES: usize = 4;
/// Requests sent on one lane and not yet answered, at most; the next
/// wait until replies come back.
pub const LANE_IN_FLIGHT_MAX: usize = 4096;
/// Requests waiting for a lane to take them, at most; a client connection
/// that finds its lane's queue full waits for room.
pub const LANE_WAITING_MAX: usize = 1024;
/// Bytes of requests forwarded and not yet answered, over all lanes. A
/// request larger than this takes all of it.
pub const FORWARD_BYTES_IN_FLIGHT_MAX: usize = 64 * 1024 * 1024;
/// A lane with requests in flight fails when no reply arrives for this
/// long (the leader is gone or stuck).
pub const FORWARD_TIMEOUT_MS: u64 = 5_000;
/// A relayed reply is at most this large (a multi-get of max-size values
/// can be big; beyond this the follower gives up rather than buffer it).
pub const FORWARD_REPLY_BYTES_MAX: usize = 256 * 1024 * 1024;
/// How long a follower waits for a reachable leader before it answers
/// `SERVER_ERROR no leader available`: a failover takes about a second.
pub const FORWARD_FAILOVER_WAIT_MS: u64 = 3_000;
/// A connection attempt to the leader gets this long.
const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// How often a lane without a leader looks for the next one.
const FORWARD_RETRY_MS: u64 = 20;

/// How the leader's reply to a forwarded request is framed: a text reply
/// of the kind its request expects, one meta response, or one
/// binary-protocol response packet (a follower forwards meta and binary
/// requests in their loud forms, so that every one has a reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Text(Expect),
    Meta,
    Binary,
}

/// What became of a request relayed to the leader.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// The leader's reply (empty for a `noreply` request).
    Reply(Bytes),
    /// No leader answered in time, or the one that had it failed: the
    /// error line for the client.
    Failed(&'static str),
}

/// Why a lane's connection to the leader failed.
#[derive(Debug, Error)]
enum LinkError {
    #[error("leader {0} unreachable: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("leader {0} closed the connection")]
    Closed(SocketAddr),
    #[error("leader {0} did not answer in time")]
    Timeout(SocketAddr),
    #[error("leader {0} sent a reply that does not parse")]
    BadReply(SocketAddr),
    #[error("leader {0} refused the proof of the cluster secret: {1}")]
    Refused(SocketAddr, String),
}

/// The server's lanes to its leader, started on first use.
pub struct LeaderLink {
    /// The first [`LANES`] carry requests from clients; the next
    /// [`LANES`] carry requests another server forwarded here (while this
    /// server is not, or no longer, the leader): kept apart, so that a
    /// lane that sent a request here never waits for its own queue.
    lanes: Vec<OnceLock<mpsc::Sender<Job>>>,
    next_lane: AtomicUsize,
    /// [`FORWARD_BYTES_IN_FLIGHT_MAX`].
    bytes: Arc<Semaphore>,
    /// The cluster secret, which each lane proves to the leader when it
    /// connects (`None`: a server alone, which never forwards).
    secret: Option<[u8; SECRET_BYTES]>,
    /// `-Z`: lanes connect with TLS, as clients do.
    tls: Option<Arc<Tls>>,
}

impl LeaderLink {
    pub fn new(secret: Option<[u8; SECRET_BYTES]>, tls: Option<Arc<Tls>>) -> LeaderLink {
        LeaderLink {
            lanes: (0..2 * LANES).map(|_| OnceLock::new()).collect(),
            next_lane: AtomicUsize::new(0),
            bytes: Arc::new(Semaphore::new(FORWARD_BYTES_IN_FLIGHT_MAX)),
            secret,
            tls,
        }
    }

    /// The lane a client connection forwards over for its life;
    /// `second_hop` for a connection of another server's forwarder.
    pub fn pick_lane(&self, second_hop: bool) -> usize {
        let lane = self.next_lane.fetch_add(1, Relaxed) % LANES;
        if second_hop {
            lane + LANES
        } else {
            lane
        }
    }

    /// Queues `raw` (one complete request) for the leader on `lane`, behind
    /// the requests queued there before it, and returns where its reply
    /// will arrive. Waits while the lane's queue or the bytes in flight are
    /// at their bound. A read (`read_only`) is sent again after a failover
    /// even if it may have reached the failed leader.
    pub async fn submit(
        &self,
        lane: usize,
        view: &Arc<ClusterView>,
        raw: Bytes,
        framing: Framing,
        noreply: bool,
        read_only: bool,
    ) -> oneshot::Receiver<Relayed> {
        let (reply, answer) = oneshot::channel();
        let size = raw.len().clamp(1, FORWARD_BYTES_IN_FLIGHT_MAX) as u32;
        let Ok(bytes) = self.bytes.clone().acquire_many_owned(size).await else {
            unreachable!("the semaphore is never closed");
        };
        let job = Job {
            raw,
            framing,
            noreply,
            read_only,
            deadline: Instant::now() + Duration::from_millis(FORWARD_FAILOVER_WAIT_MS),
            reply,
            _bytes: bytes,
        };
        let lanes = self.lanes[lane].get_or_init(|| {
            let (tx, rx) = mpsc::channel(LANE_WAITING_MAX);
            let secret = self.secret.expect("only a cluster member forwards");
            tokio::spawn(Lane::new(view.clone(), rx, secret, self.tls.clone()).run());
            tx
        });
        if let Err(mpsc::error::SendError(job)) = lanes.send(job).await {
            // Only when the lane's task ended, which it does not while its
            // sender lives: answered rather than lost.
            job.answer(Relayed::Failed(errors::NO_LEADER));
        }
        answer
    }
}
