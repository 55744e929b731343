//! The LB's TCP discovery protocol (DESIGN §3a "Discovery") as pure code:
//! [`parse`] turns bytes into one [`Request`], the `encode_*` functions
//! write replies into a `BytesMut`. No sockets: the driver reads and writes
//! the connection and asks the core for a [`ClusterView`].
//!
//! # Format
//!
//! Lines end in `\r\n` (a bare `\n` is accepted, as memcached does).
//!
//! ```text
//! get-servers        -> <leader ip:port>\r\n <other ip:port>\r\n ... end\r\n
//! stats              -> STAT <name> <value>\r\n ... END\r\n
//! lbs                -> the LB group's list: lbs v1\r\n next <id>\r\n
//!                       <id> <ip:port>\r\n ... END\r\n (an LB alone:
//!                       END alone)
//! challenge          -> CHALLENGE <64 hex digits>\r\n
//! remove-server <id> <proof>
//!                    -> OK\r\n | NOT_FOUND\r\n
//!                     | NOT_LEADER [<leader LB ip:port>]\r\n (an LB that
//!                       does not lead its group)
//!                     | CLIENT_ERROR unauthenticated: <why>\r\n
//! add-lb <ip:port> <proof>
//!                    -> OK <id>\r\n (committed in the LB group's log; the
//!                       LB is a learner until it has caught up) | EXISTS\r\n
//!                     | NOT_LEADER [...]\r\n | SERVER_ERROR <why>\r\n
//!                     | CLIENT_ERROR unauthenticated: <why>\r\n
//! remove-lb <ip:port> <proof>
//!                    -> OK <id>\r\n | NOT_FOUND\r\n | as add-lb
//! anything else      -> ERROR\r\n
//! a line over LINE_BYTES_MAX -> CLIENT_ERROR line too long\r\n (the rest of
//!                       the line is skipped; the connection stays open)
//! ```
//!
//! Reading is open to anyone who reaches the port; a command that changes
//! the cluster carries a proof of the cluster secret (64 hex digits,
//! [`data::admin_proof`]) for the challenge this connection was handed
//! last, which it uses up.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use data::admin_proof::{self, CHALLENGE_BYTES, PROOF_BYTES};
use data::frame::{Role, ServerId, SECRET_BYTES};

use std::net::SocketAddr;

use crate::core::{ClusterView, RemoveError};
use crate::group::ChangeError;

/// Longest request line, newline included. The longest valid one is
/// `remove-lb [<IPv6, 45 bytes>]:65535 <64 hex digits>\r\n`, 130 bytes.
pub const LINE_BYTES_MAX: usize = 160;

/// One discovery request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    GetServers,
    Stats,
    /// A fresh challenge for the next command that changes the cluster.
    Challenge,
    RemoveServer {
        id: ServerId,
        proof: Proof,
    },
    /// The LB group's list ([`crate::group::Peers::encode`]).
    Lbs,
    /// Add or remove an LB of the group.
    ChangeLbs {
        change: LbChange,
        proof: Proof,
    },
}

/// A change of the LB group's members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbChange {
    Add(SocketAddr),
    Remove(SocketAddr),
}

impl LbChange {
    /// The command's verb, as `store` and the wire name it.
    pub fn verb(self) -> &'static str {
        match self {
            LbChange::Add(_) => "add-lb",
            LbChange::Remove(_) => "remove-lb",
        }
    }

    /// The words of the command that its proof covers.
    pub fn command(self) -> String {
        let (LbChange::Add(addr) | LbChange::Remove(addr)) = self;
        format!("{} {addr}", self.verb())
    }
}

/// Why an `add-lb` or `remove-lb` was not done.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LbChangeError {
    #[error("{0}")]
    Change(#[from] ChangeError),
    #[error("not the leading LB")]
    NotLeader(Option<SocketAddr>),
    #[error("this LB runs alone (no --peers): there is no LB group to change")]
    Alone,
    #[error(
        "a change of the LB group is under way (an added LB catching up, or a removal): wait until it is done (store status)"
    )]
    Busy,
    #[error(
        "the change may or may not have been committed (the LB group's leadership changed): see store status, then ask again"
    )]
    Unknown,
}

/// The proof a command that changes the cluster carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    Missing,
    /// Not 64 hex digits.
    Malformed,
    Given([u8; PROOF_BYTES]),
}

/// Why a command that changes the cluster was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unauthenticated {
    /// It came without a proof.
    NoProof,
    /// No challenge is outstanding on this connection (none was asked
    /// for, or the last one was used).
    NoChallenge,
    /// The proof is not the cluster secret's for this challenge and
    /// command.
    BadProof,
}

impl Unauthenticated {
    fn reason(self) -> &'static str {
        match self {
            Unauthenticated::NoProof => {
                "this command changes the cluster: send `challenge`, then the command and its proof of the cluster secret (store remove-server --cluster-file FILE does both)"
            }
            Unauthenticated::NoChallenge => {
                "no challenge on this connection (each proof is good for one command)"
            }
            Unauthenticated::BadProof => "the proof does not match the cluster secret",
        }
    }
}

/// The words of `remove-server <id>` that its proof covers.
pub fn remove_server_command(id: ServerId) -> String {
    format!("remove-server {}", id.0)
}

/// A command line that changes the cluster: `command`'s words and the
/// proof of `secret` under `challenge` for them.
pub fn authenticated_line(
    command: &str,
    secret: &[u8; SECRET_BYTES],
    challenge: &[u8; CHALLENGE_BYTES],
) -> String {
    let proof = admin_proof::proof(secret, challenge, command);
    format!("{command} {}\r\n", admin_proof::to_hex(&proof))
}

/// Checks the proof `command` carried against the challenge the connection
/// held (the caller takes it: used or not, it is gone).
pub fn check_proof(
    proof: Proof,
    challenge: Option<[u8; CHALLENGE_BYTES]>,
    secret: &[u8; SECRET_BYTES],
    command: &str,
) -> Result<(), Unauthenticated> {
    let given = match proof {
        Proof::Missing => return Err(Unauthenticated::NoProof),
        Proof::Malformed => return Err(Unauthenticated::BadProof),
        Proof::Given(given) => given,
    };
    let challenge = challenge.ok_or(Unauthenticated::NoChallenge)?;
    if admin_proof::verify(secret, &challenge, command, &given) {
        Ok(())
    } else {
        Err(Unauthenticated::BadProof)
    }
}

/// The challenge in the LB's `CHALLENGE <hex>` line (newline and all, or
/// without it), for the command's side.
pub fn parse_challenge(line: &str) -> Option<[u8; CHALLENGE_BYTES]> {
    let hex = line
        .trim_end_matches(['\r', '\n'])
        .strip_prefix("CHALLENGE ")?;
    admin_proof::from_hex(hex)
}

/// What [`parse`] found at the front of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No complete line yet, and it is still under the limit.
    Incomplete,
    /// A request, and the bytes of its line.
    Request { request: Request, consumed: usize },
    /// A complete line that is no request: answer `ERROR`.
    Unknown { consumed: usize },
    /// [`LINE_BYTES_MAX`] bytes without a newline: answer `CLIENT_ERROR`
    /// and skip up to the next newline with [`skip_line`].
    TooLong,
}

/// Parses the first line in `buf`.
pub fn parse(buf: &[u8], line_bytes_max: usize) -> Parsed {
    let Some(newline) = buf.iter().take(line_bytes_max).position(|b| *b == b'\n') else {
        return if buf.len() >= line_bytes_max {
            Parsed::TooLong
        } else {
            Parsed::Incomplete
        };
    };
    let consumed = newline + 1;
    let line = buf[..newline]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..newline]);
    match request(line) {
        Some(request) => Parsed::Request { request, consumed },
        None => Parsed::Unknown { consumed },
    }
}

fn request(line: &[u8]) -> Option<Request> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    let request = match (words.next()?, words.next()) {
        ("get-servers", None) => Request::GetServers,
        ("stats", None) => Request::Stats,
        ("challenge", None) => Request::Challenge,
        ("remove-server", Some(id)) => {
            // Digits only: u64's parser would also take a leading '+'.
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Request::RemoveServer {
                id: ServerId(id.parse().ok()?),
                proof: proof(words.next()),
            }
        }
        ("lbs", None) => Request::Lbs,
        (verb @ ("add-lb" | "remove-lb"), Some(addr)) => {
            let addr: SocketAddr = addr.parse().ok()?;
            let change = if verb == "add-lb" {
                LbChange::Add(addr)
            } else {
                LbChange::Remove(addr)
            };
            Request::ChangeLbs {
                change,
                proof: proof(words.next()),
            }
        }
        _ => return None,
    };
    words.next().is_none().then_some(request)
}

/// The proof word of a command that changes the cluster, if any.
fn proof(word: Option<&str>) -> Proof {
    match word {
        None => Proof::Missing,
        Some(hex) => admin_proof::from_hex(hex).map_or(Proof::Malformed, Proof::Given),
    }
}

/// Bytes to drop while skipping the rest of an overlong line: through the
/// first newline if there is one (then the skip is over), else everything.
pub fn skip_line(buf: &[u8]) -> (usize, bool) {
    match buf.iter().position(|b| *b == b'\n') {
        Some(at) => (at + 1, true),
        None => (buf.len(), false),
    }
}

pub fn encode_error(out: &mut BytesMut) {
    out.put_slice(b"ERROR\r\n");
}

pub fn encode_line_too_long(out: &mut BytesMut) {
    out.put_slice(b"CLIENT_ERROR line too long\r\n");
}

/// `get-servers`: the leader's memcached address first, then the others
/// in id order; servers being removed are no longer handed out.
pub fn encode_servers(view: &ClusterView, out: &mut BytesMut) {
    let listed = |s: &&crate::core::ServerView| !s.removing;
    let leader = view
        .servers
        .iter()
        .filter(listed)
        .find(|s| Some(s.id) == view.leader);
    let others = view
        .servers
        .iter()
        .filter(listed)
        .filter(|s| Some(s.id) != view.leader);
    let mut text = String::new();
    for server in leader.into_iter().chain(others) {
        // SocketAddr's Display brackets IPv6: "[::1]:11211".
        let _ = write!(text, "{}\r\n", server.tcp);
    }
    text.push_str("end\r\n");
    out.put_slice(text.as_bytes());
}

/// Where this LB stands in its group, for `stats`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    /// It runs the election core: alone, or leading its group.
    pub leads: bool,
    /// Its member id in the group (1 alone).
    pub id: u64,
    /// LBs in its group.
    pub lbs: usize,
    /// The LB group's term (0 alone).
    pub lb_term: u64,
    /// The discovery address of the LB that leads the group, if known.
    pub lb_leader: Option<std::net::SocketAddr>,
    /// This LB's replica of the group's log: its last entry and how far it
    /// knows the log committed (0 alone).
    pub lb_last_index: u64,
    pub lb_commit_index: u64,
    /// Every LB of the group by id, with its discovery address (none
    /// alone), so that one LB's `stats` leads to all of them.
    pub peers: Vec<(u64, std::net::SocketAddr)>,
    /// The ids that vote in the group's configuration as this LB knows it
    /// (an LB added is a learner until it has caught up).
    pub voters: Vec<u64>,
}

impl Standing {
    /// An LB alone: it leads its group of one.
    pub fn alone() -> Standing {
        Standing {
            leads: true,
            id: 1,
            lbs: 1,
            lb_term: 0,
            lb_leader: None,
            lb_last_index: 0,
            lb_commit_index: 0,
            peers: Vec::new(),
            voters: Vec::new(),
        }
    }
}

/// `remove-server <id>`'s reply.
pub fn encode_remove(result: Result<(), RemoveError>, out: &mut BytesMut) {
    match result {
        Ok(()) => out.put_slice(b"OK\r\n"),
        Err(RemoveError::NotFound(_)) => out.put_slice(b"NOT_FOUND\r\n"),
        Err(RemoveError::NotLeader(Some(leader))) => {
            out.put_slice(format!("NOT_LEADER {leader}\r\n").as_bytes())
        }
        Err(RemoveError::NotLeader(None)) => out.put_slice(b"NOT_LEADER\r\n"),
    }
}

/// `add-lb`'s or `remove-lb`'s reply: the LB's id when done.
pub fn encode_lb_change(result: Result<ServerId, LbChangeError>, out: &mut BytesMut) {
    let line = match result {
        Ok(id) => format!("OK {}\r\n", id.0),
        Err(LbChangeError::Change(ChangeError::Exists(_))) => "EXISTS\r\n".to_string(),
        Err(LbChangeError::Change(ChangeError::NotFound(_))) => "NOT_FOUND\r\n".to_string(),
        Err(LbChangeError::NotLeader(Some(leader))) => format!("NOT_LEADER {leader}\r\n"),
        Err(LbChangeError::NotLeader(None)) => "NOT_LEADER\r\n".to_string(),
        Err(other) => format!("SERVER_ERROR {other}\r\n"),
    };
    out.put_slice(line.as_bytes());
}

/// `lbs`: the list ([`crate::group::Peers::encode`], one entry per line),
/// then `END`.
pub fn encode_lbs(list: &[u8], out: &mut BytesMut) {
    for line in list.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        out.put_slice(line);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"END\r\n");
}

pub fn encode_challenge(challenge: &[u8; CHALLENGE_BYTES], out: &mut BytesMut) {
    out.put_slice(format!("CHALLENGE {}\r\n", admin_proof::to_hex(challenge)).as_bytes());
}

pub fn encode_unauthenticated(why: Unauthenticated, out: &mut BytesMut) {
    out.put_slice(format!("CLIENT_ERROR unauthenticated: {}\r\n", why.reason()).as_bytes());
}

/// `stats`: the LB's term and leader, counters (the core's and the
/// driver's, passed in as `counters`), then per server, in id order.
/// Unknown values (never heard, no status yet) are `-1`.
pub fn encode_stats(
    standing: &Standing,
    view: &ClusterView,
    counters: &[(&str, u64)],
    out: &mut BytesMut,
) {
    let mut text = String::new();
    let mut stat = |name: &str, value: &dyn std::fmt::Display| {
        let _ = write!(text, "STAT {name} {value}\r\n");
    };
    stat("role", &if standing.leads { "leader" } else { "follower" });
    stat("lb_id", &standing.id);
    stat("lbs", &standing.lbs);
    stat("lb_term", &standing.lb_term);
    stat(
        "lb_leader",
        &standing
            .lb_leader
            .map_or_else(|| "-".to_string(), |a| a.to_string()),
    );
    stat("lb_last_index", &standing.lb_last_index);
    stat("lb_commit_index", &standing.lb_commit_index);
    for (id, addr) in &standing.peers {
        stat(&format!("lb.{id}.addr"), addr);
        stat(
            &format!("lb.{id}.voter"),
            &u8::from(standing.voters.contains(id)),
        );
    }
    stat("term", &view.term);
    stat("leader", &view.leader.unwrap_or(ServerId::LB));
    stat(
        "election_term",
        &view.election_term.map_or(0, |term| term.0),
    );
    stat("servers", &view.servers.len());
    let core = &view.counters;
    stat("elections_started", &core.elections_started);
    stat("leaders_named", &core.leaders_named);
    stat("leader_unreachable", &core.leader_unreachable);
    stat("registers_refused", &core.registers_refused);
    stat("frames_from_unregistered", &core.from_unregistered);
    stat("stale_promises", &core.stale_promises);
    stat("frames_unexpected", &core.unexpected);
    for (name, value) in counters {
        stat(name, value);
    }
    let leader_last_index = view
        .leader
        .and_then(|leader| view.servers.iter().find(|s| s.id == leader))
        .and_then(|s| s.status.as_ref())
        .map(|status| status.last_index.0);
    for server in &view.servers {
        let id = server.id;
        let status = server.status.as_ref();
        let role = match status.map(|s| s.role) {
            Some(Role::Leader) => "leader",
            Some(Role::Follower) => "follower",
            Some(Role::Learner) => "learner",
            None => "unknown",
        };
        let unknown = "-1".to_string();
        let known = |value: Option<u64>| value.map_or_else(|| unknown.clone(), |v| v.to_string());
        stat(&format!("server.{id}.role"), &role);
        stat(&format!("server.{id}.tcp"), &server.tcp);
        stat(&format!("server.{id}.udp"), &server.udp);
        stat(&format!("server.{id}.removing"), &u8::from(server.removing));
        stat(
            &format!("server.{id}.reachable"),
            &u8::from(server.reachable),
        );
        stat(
            &format!("server.{id}.last_heartbeat_ms_ago"),
            &known(server.last_heard_ms_ago),
        );
        stat(
            &format!("server.{id}.term"),
            &known(status.map(|s| s.term.0)),
        );
        stat(
            &format!("server.{id}.last_index"),
            &known(status.map(|s| s.last_index.0)),
        );
        stat(
            &format!("server.{id}.commit_index"),
            &known(status.map(|s| s.commit_index.0)),
        );
        stat(
            &format!("server.{id}.applied_index"),
            &known(status.map(|s| s.applied_index.0)),
        );
        stat(
            &format!("server.{id}.leader_contact_ms"),
            &known(status.map(|s| u64::from(s.leader_contact_ms))),
        );
        let lag = leader_last_index
            .zip(status)
            .map(|(leader, s)| leader.saturating_sub(s.last_index.0));
        stat(&format!("server.{id}.lag"), &known(lag));
    }
    text.push_str("END\r\n");
    out.put_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CoreCounters, ServerStatus, ServerView};
    use data::frame::{LogIndex, Term};

    #[test]
    fn parses_each_request_and_its_length() {
        for (bytes, request) in [
            (&b"get-servers\r\n"[..], Request::GetServers),
            (b"stats\r\n", Request::Stats),
            (b"stats\n", Request::Stats),
            (b"challenge\r\n", Request::Challenge),
            (b"lbs\r\n", Request::Lbs),
            (
                b"add-lb 127.0.0.1:11314\r\n",
                Request::ChangeLbs {
                    change: LbChange::Add("127.0.0.1:11314".parse().unwrap()),
                    proof: Proof::Missing,
                },
            ),
            (
                b"remove-lb [::1]:11311 zz\r\n",
                Request::ChangeLbs {
                    change: LbChange::Remove("[::1]:11311".parse().unwrap()),
                    proof: Proof::Malformed,
                },
            ),
            (
                b"remove-server 42\r\n",
                Request::RemoveServer {
                    id: ServerId(42),
                    proof: Proof::Missing,
                },
            ),
            (
                b"remove-server 18446744073709551615 zz\r\n",
                Request::RemoveServer {
                    id: ServerId(u64::MAX),
                    proof: Proof::Malformed,
                },
            ),
        ] {
            assert_eq!(
                parse(bytes, LINE_BYTES_MAX),
                Parsed::Request {
                    request,
                    consumed: bytes.len()
                }
            );
        }
        // Pipelined: only the first line.
        assert_eq!(
            parse(b"stats\r\nget-servers\r\n", LINE_BYTES_MAX),
            Parsed::Request {
                request: Request::Stats,
                consumed: 7
            }
        );
    }

    #[test]
    fn anything_else_is_unknown() {
        for bytes in [
            &b"\r\n"[..],
            b"get\r\n",
            b"GET-SERVERS\r\n",
            b"stats items\r\n",
            b"get-servers \r\n",
            b"remove-server\r\n",
            b"remove-server +1\r\n",
            b"remove-server -1\r\n",
            b"remove-server 18446744073709551616\r\n",
            b"remove-server 1 2 3\r\n",
            b"challenge 1\r\n",
            b"lbs 1\r\n",
            b"add-lb\r\n",
            b"add-lb localhost:11311\r\n",
            b"remove-lb 127.0.0.1\r\n",
            b"\xff\xfe\r\n",
        ] {
            assert_eq!(
                parse(bytes, LINE_BYTES_MAX),
                Parsed::Unknown {
                    consumed: bytes.len()
                },
                "{bytes:?}"
            );
        }
    }

    const SECRET: [u8; SECRET_BYTES] = [3; SECRET_BYTES];

    #[test]
    fn an_authenticated_line_parses_and_its_proof_checks_once() {
        let challenge = [5; CHALLENGE_BYTES];
        let mut out = BytesMut::new();
        encode_challenge(&challenge, &mut out);
        let text = std::str::from_utf8(&out).expect("ascii");
        assert_eq!(text.len(), "CHALLENGE \r\n".len() + 2 * CHALLENGE_BYTES);
        assert_eq!(parse_challenge(text), Some(challenge));
        assert_eq!(parse_challenge("CHALLENGE 05\r\n"), None);
        assert_eq!(parse_challenge("ERROR\r\n"), None);

        let id = ServerId(u64::MAX);
        let command = remove_server_command(id);
        let line = authenticated_line(&command, &SECRET, &challenge);
        assert!(line.len() <= LINE_BYTES_MAX, "{} bytes", line.len());
        let Parsed::Request {
            request: Request::RemoveServer { id: parsed, proof },
            consumed,
        } = parse(line.as_bytes(), LINE_BYTES_MAX)
        else {
            panic!("not a remove-server: {line:?}");
        };
        assert_eq!((parsed, consumed), (id, line.len()));
        assert_eq!(
            check_proof(proof, Some(challenge), &SECRET, &command),
            Ok(())
        );
        // Without the challenge it was made for (none, or another one), with
        // another secret, for another command, or with none at all: refused.
        assert_eq!(
            check_proof(proof, None, &SECRET, &command),
            Err(Unauthenticated::NoChallenge)
        );
        assert_eq!(
            check_proof(proof, Some([6; CHALLENGE_BYTES]), &SECRET, &command),
            Err(Unauthenticated::BadProof)
        );
        assert_eq!(
            check_proof(proof, Some(challenge), &[4; SECRET_BYTES], &command),
            Err(Unauthenticated::BadProof)
        );
        assert_eq!(
            check_proof(proof, Some(challenge), &SECRET, "remove-server 1"),
            Err(Unauthenticated::BadProof)
        );
        for (proof, why) in [
            (Proof::Missing, Unauthenticated::NoProof),
            (Proof::Malformed, Unauthenticated::BadProof),
        ] {
            assert_eq!(
                check_proof(proof, Some(challenge), &SECRET, &command),
                Err(why)
            );
            let mut out = BytesMut::new();
            encode_unauthenticated(why, &mut out);
            assert!(out.starts_with(b"CLIENT_ERROR unauthenticated: "));
            assert!(out.ends_with(b"\r\n") && out.len() < 256);
        }
    }

    #[test]
    fn incomplete_until_newline_and_too_long_at_the_limit() {
        assert_eq!(parse(b"get-serv", LINE_BYTES_MAX), Parsed::Incomplete);
        assert_eq!(parse(b"", LINE_BYTES_MAX), Parsed::Incomplete);
        let long = vec![b'a'; LINE_BYTES_MAX];
        assert_eq!(parse(&long, LINE_BYTES_MAX), Parsed::TooLong);
        assert_eq!(
            parse(&long[..LINE_BYTES_MAX - 1], LINE_BYTES_MAX),
            Parsed::Incomplete
        );
        assert_eq!(skip_line(b"aaaa"), (4, false));
        assert_eq!(skip_line(b"aa\nstats\r\n"), (3, true));
    }

    fn view() -> ClusterView {
        let server = |id: u64, last_index: Option<u64>| ServerView {
            id: ServerId(id),
            tcp: format!("127.0.0.1:{}", 11210 + id)
                .parse()
                .expect("literal"),
            udp: format!("127.0.0.1:{}", 12210 + id)
                .parse()
                .expect("literal"),
            removing: false,
            last_heard_ms_ago: last_index.map(|_| 20),
            reachable: last_index.is_some(),
            status: last_index.map(|i| ServerStatus {
                received_ms: 0,
                seq: 1,
                term: Term(3),
                role: if id == 2 {
                    Role::Leader
                } else {
                    Role::Follower
                },
                leader: ServerId(2),
                last_term: Term(3),
                last_index: LogIndex(i),
                commit_index: LogIndex(i),
                applied_index: LogIndex(i),
                leader_contact_ms: 5,
                voters: vec![],
                learners: vec![],
            }),
        };
        ClusterView {
            term: Term(3),
            leader: Some(ServerId(2)),
            election_term: None,
            servers: vec![server(1, Some(7)), server(2, Some(10)), server(3, None)],
            counters: CoreCounters::default(),
        }
    }

    #[test]
    fn get_servers_lists_the_leader_first() {
        let mut out = BytesMut::new();
        encode_servers(&view(), &mut out);
        assert_eq!(
            &out[..],
            b"127.0.0.1:11212\r\n127.0.0.1:11211\r\n127.0.0.1:11213\r\nend\r\n"
        );
        let mut removing = view();
        removing.servers[0].removing = true;
        removing.leader = None;
        let mut out = BytesMut::new();
        encode_servers(&removing, &mut out);
        assert_eq!(&out[..], b"127.0.0.1:11212\r\n127.0.0.1:11213\r\nend\r\n");
    }

    #[test]
    fn stats_has_per_server_lines_and_lag() {
        let mut out = BytesMut::new();
        encode_stats(
            &Standing::alone(),
            &view(),
            &[("frames_bad_mac", 4)],
            &mut out,
        );
        let text = std::str::from_utf8(&out).expect("ascii");
        for line in [
            "STAT term 3\r\n",
            "STAT leader 2\r\n",
            "STAT servers 3\r\n",
            "STAT frames_bad_mac 4\r\n",
            "STAT server.2.role leader\r\n",
            "STAT server.1.role follower\r\n",
            "STAT server.1.tcp 127.0.0.1:11211\r\n",
            "STAT server.1.udp 127.0.0.1:12211\r\n",
            "STAT server.1.last_heartbeat_ms_ago 20\r\n",
            "STAT server.1.last_index 7\r\n",
            "STAT server.1.commit_index 7\r\n",
            "STAT server.1.applied_index 7\r\n",
            "STAT server.1.lag 3\r\n",
            "STAT server.2.lag 0\r\n",
            "STAT server.3.role unknown\r\n",
            "STAT server.3.last_heartbeat_ms_ago -1\r\n",
            "STAT server.3.lag -1\r\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from {text}");
        }
        assert!(text.ends_with("END\r\n"));
        assert!(text.lines().all(|l| l.starts_with("STAT ") || l == "END"));
    }
}
