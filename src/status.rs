//! `store status`: asks the LBs for `stats` over their TCP ports and shows
//! the cluster: each LB of the LB group (its role, LB term, log indexes,
//! whether it answered), then the data group as the leading LB sees it
//! (term, leader, and per server its role, addresses, indexes, lag and last
//! heartbeat), as a table or as JSON.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};

/// A `stats` reply is at most this many lines (servers × fields).
const STATS_LINES_MAX: usize = 100_000;

/// The LB's `stats`, split into cluster-wide fields and per-server fields.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub cluster: BTreeMap<String, String>,
    /// server id → field → value.
    pub servers: BTreeMap<String, BTreeMap<String, String>>,
    /// The LB group's members as this LB lists them: LB id → field → value
    /// (`addr`, its discovery address); empty for an LB alone.
    pub lbs: BTreeMap<String, BTreeMap<String, String>>,
}

/// One LB as `store status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbStatus {
    pub addr: String,
    /// Its own fields (`role`, `lb_term`, ...), or why it did not answer.
    pub stats: Result<BTreeMap<String, String>, String>,
}

/// The LB group and the data group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub lbs: Vec<LbStatus>,
    /// The data group as the LB leading the LB group sees it (the one that
    /// hears every server), else as the first LB that answered.
    pub data: ClusterStatus,
}

impl ClusterStatus {
    /// The memcached address of the server the LB names leader. Right after
    /// a leader dies this is still the dead one, until the LB names another
    /// (its `role` field keeps saying `leader` too: it is its last report;
    /// `reachable` turns 0 once the LB has not heard it for the election
    /// timeout).
    pub fn leader_tcp(&self) -> Option<std::net::SocketAddr> {
        let id = self.cluster.get("leader")?;
        self.servers.get(id)?.get("tcp")?.parse().ok()
    }

    /// The LB's id and fields for the server whose memcached address is `tcp`.
    pub fn row_of(
        &self,
        tcp: std::net::SocketAddr,
    ) -> Option<(&String, &BTreeMap<String, String>)> {
        let tcp = tcp.to_string();
        self.servers
            .iter()
            .find(|(_, fields)| fields.get("tcp") == Some(&tcp))
    }
}

/// Fetches `stats` from the first LB of `lbs` that answers, then from
/// every LB of its group (and every LB listed), so that one LB's address is
/// enough to see them all and a dead one is shown as such.
pub fn fetch_group(lbs: &[String], timeout: Duration) -> anyhow::Result<GroupStatus> {
    let mut failures = Vec::new();
    let mut first = None;
    for lb in lbs {
        match fetch(lb, timeout) {
            Ok(status) => {
                first = Some((lb.clone(), status));
                break;
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let Some((first_addr, first_status)) = first else {
        bail!("no LB answered: {}", failures.join("; "));
    };
    let mut addrs: Vec<String> = first_status
        .lbs
        .values()
        .filter_map(|fields| fields.get("addr").cloned())
        .collect();
    for lb in lbs {
        if !addrs.contains(lb) {
            addrs.push(lb.clone());
        }
    }
    let mut rows = Vec::new();
    let mut data = None;
    for addr in addrs {
        let fetched = if addr == first_addr {
            Ok(first_status.clone())
        } else {
            fetch(&addr, timeout).map_err(|e| format!("{e:#}"))
        };
        if let Ok(status) = &fetched {
            if data.is_none() && status.cluster.get("role").map(String::as_str) == Some("leader") {
                data = Some(status.clone());
            }
        }
        rows.push(LbStatus {
            addr,
            stats: fetched.map(with_own_vote),
        });
    }
    Ok(GroupStatus {
        lbs: rows,
        data: data.unwrap_or(first_status),
    })
}

/// An LB's own fields, with `voter` (1, or 0 while an LB added catches up
/// as a learner) from its `lb.<its id>.voter` line.
fn with_own_vote(status: ClusterStatus) -> BTreeMap<String, String> {
    let mut fields = status.cluster;
    let vote = fields
        .get("lb_id")
        .and_then(|id| status.lbs.get(id))
        .and_then(|lb| lb.get("voter"))
        .cloned();
    if let Some(vote) = vote {
        fields.insert("voter".into(), vote);
    }
    fields
}

/// A `stats` reply larger than this is not a store's.
const STATS_BYTES_MAX: usize = 1 << 20;

/// A server's (or an LB's) `stats` as a map, each wait bounded by
/// `timeout`; empty if it cannot be reached.
pub fn stats_of(addr: std::net::SocketAddr, timeout: Duration) -> BTreeMap<String, String> {
    stats_as(addr, timeout, None)
}

/// [`stats_of`] a server that may require its clients to log in (`-Y`,
/// `-S`): the connection first proves the cluster secret, as a
/// follower's forwarding link does (DESIGN §5a "Authentication").
/// With `tls`, over TLS (a server started with -Z), trusting what a
/// follower's lane trusts.
pub fn stats_as_peer(
    addr: std::net::SocketAddr,
    timeout: Duration,
    secret: &[u8; data::frame::SECRET_BYTES],
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> BTreeMap<String, String> {
    let Ok(tcp) = TcpStream::connect_timeout(&addr, timeout) else {
        return BTreeMap::new();
    };
    if tcp.set_read_timeout(Some(timeout)).is_err() {
        return BTreeMap::new();
    }
    match tls {
        None => stats_over(tcp, Some(secret)),
        Some(config) => {
            let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
            let Ok(session) = rustls::ClientConnection::new(config, name) else {
                return BTreeMap::new();
            };
            stats_over(rustls::StreamOwned::new(session, tcp), Some(secret))
        }
    }
}

fn stats_as(
    addr: std::net::SocketAddr,
    timeout: Duration,
    secret: Option<&[u8; data::frame::SECRET_BYTES]>,
) -> BTreeMap<String, String> {
    let Ok(stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return BTreeMap::new();
    };
    if stream.set_read_timeout(Some(timeout)).is_err() {
        return BTreeMap::new();
    }
    stats_over(stream, secret)
}

/// `stats` over a connection made, after proving `secret` if given.
fn stats_over<S: std::io::Read + std::io::Write>(
    mut stream: S,
    secret: Option<&[u8; data::frame::SECRET_BYTES]>,
) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    if let Some(secret) = secret {
        if prove_peer(&mut stream, secret).is_none() {
            return map;
        }
    }
    if stream.write_all(b"stats\r\n").is_err() {
        return map;
    }
    let mut reply = Vec::new();
    let mut chunk = [0u8; 8192];
    while !reply.ends_with(b"END\r\n") && reply.len() < STATS_BYTES_MAX {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return map,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
        }
    }
    for line in String::from_utf8_lossy(&reply).lines() {
        let mut words = line.splitn(3, ' ');
        if let (Some("STAT"), Some(name), Some(value)) = (words.next(), words.next(), words.next())
        {
            map.insert(name.to_string(), value.to_string());
        }
    }
    map
}

/// `forwarder`, then its proof for the challenge (one line each way).
fn prove_peer<S: std::io::Read + std::io::Write>(
    stream: &mut S,
    secret: &[u8; data::frame::SECRET_BYTES],
) -> Option<()> {
    stream.write_all(b"forwarder\r\n").ok()?;
    let reply = read_reply_line(stream)?;
    let answer = server::auth::answer_challenge(secret, &reply)?;
    stream.write_all(&answer).ok()?;
    (read_reply_line(stream)? == "OK").then_some(())
}

/// One short reply line, without its line end.
fn read_reply_line<S: std::io::Read>(stream: &mut S) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if line.len() > 512 || stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        line.push(byte[0]);
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).ok()
}

/// Fetches `stats` from the LB's TCP port.
pub fn fetch(lb: &str, timeout: Duration) -> anyhow::Result<ClusterStatus> {
    let addr = lb
        .parse()
        .with_context(|| format!("not an address: {lb}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot reach the LB at {lb}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"stats\r\n")?;
    let mut status = ClusterStatus::default();
    let reader = BufReader::new(stream);
    for (n, line) in reader.lines().enumerate() {
        let line = line.context("reading the LB's stats")?;
        let line = line.trim_end_matches('\r');
        if line == "END" {
            return Ok(status);
        }
        if n > STATS_LINES_MAX {
            bail!("the LB's stats reply is too long");
        }
        let mut words = line.splitn(3, ' ');
        let (Some("STAT"), Some(name), Some(value)) = (words.next(), words.next(), words.next())
        else {
            bail!("unexpected line from the LB: {line:?}");
        };
        let per = |prefix: &str| {
            name.strip_prefix(prefix)
                .and_then(|rest| rest.split_once('.'))
        };
        let (map, key, field) = match (per("server."), per("lb.")) {
            (Some((id, field)), _) => (&mut status.servers, id, field),
            (None, Some((id, field))) => (&mut status.lbs, id, field),
            (None, None) => {
                status.cluster.insert(name.to_string(), value.to_string());
                continue;
            }
        };
        map.entry(key.to_string())
            .or_default()
            .insert(field.to_string(), value.to_string());
    }
    bail!("the LB closed the connection before END")
}

/// The LB group, then the data group, as tables a person can read.
pub fn render_group_table(group: &GroupStatus) -> String {
    let columns = [
        ("lb", "addr"),
        ("id", "lb_id"),
        ("role", "role"),
        ("voter", "voter"),
        ("lb term", "lb_term"),
        ("last", "lb_last_index"),
        ("commit", "lb_commit_index"),
    ];
    let rows: Vec<Vec<String>> = group
        .lbs
        .iter()
        .map(|lb| {
            columns
                .iter()
                .map(|(_, key)| match (&lb.stats, *key) {
                    (_, "addr") => lb.addr.clone(),
                    (Err(_), "role") => "unreachable".into(),
                    (Ok(fields), key) => fields.get(key).cloned().unwrap_or_else(|| "-".into()),
                    (Err(_), _) => "-".into(),
                })
                .collect()
        })
        .collect();
    let mut out = format!("lbs {}\n", group.lbs.len());
    out.push_str(&table(&columns, &rows));
    out.push_str(&render_table(&group.data));
    out
}

/// Both groups as JSON: `{"lbs": {"<addr>": {...} | {"error": "..."}},
/// "cluster": {...}, "servers": {...}}`.
pub fn render_group_json(group: &GroupStatus) -> String {
    let lbs: Vec<String> = group
        .lbs
        .iter()
        .map(|lb| {
            let fields = match &lb.stats {
                Ok(fields) => object(fields),
                Err(e) => format!("{{\"error\":{}}}", json_string(e)),
            };
            format!("{}:{}", json_string(&lb.addr), fields)
        })
        .collect();
    let data = render_json(&group.data);
    format!("{{\"lbs\":{{{}}},{}", lbs.join(","), &data[1..])
}

/// A table a person can read.
pub fn render_table(status: &ClusterStatus) -> String {
    let get = |map: &BTreeMap<String, String>, key: &str| {
        map.get(key).cloned().unwrap_or_else(|| "-".into())
    };
    let mut out = String::new();
    out.push_str(&format!(
        "term {}  leader {}  servers {}\n",
        get(&status.cluster, "term"),
        get(&status.cluster, "leader"),
        status.servers.len()
    ));
    let columns = [
        ("id", "id"),
        ("role", "role"),
        ("tcp", "tcp"),
        ("udp", "udp"),
        ("term", "term"),
        ("last", "last_index"),
        ("commit", "commit_index"),
        ("applied", "applied_index"),
        ("lag", "lag"),
        ("heard ms ago", "last_heartbeat_ms_ago"),
    ];
    let rows: Vec<Vec<String>> = status
        .servers
        .iter()
        .map(|(id, fields)| {
            columns
                .iter()
                .map(|(_, key)| match *key {
                    "id" => id.clone(),
                    // A silent server's role is only its last report (a
                    // killed leader's says leader): not shown as current.
                    "role" if fields.get("reachable").is_some_and(|r| r == "0") => {
                        "unreachable".into()
                    }
                    _ => get(fields, key),
                })
                .collect()
        })
        .collect();
    out.push_str(&table(&columns, &rows));
    out
}

/// Columns titled by the first of each pair, as wide as their widest cell.
fn table(columns: &[(&str, &str)], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (title, _))| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let titles: Vec<String> = columns.iter().map(|(t, _)| t.to_string()).collect();
    let mut out = line(&titles);
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// The same as JSON: `{"cluster": {...}, "servers": {"<id>": {...}}}`.
pub fn render_json(status: &ClusterStatus) -> String {
    let servers: Vec<String> = status
        .servers
        .iter()
        .map(|(id, fields)| format!("{}:{}", json_string(id), object(fields)))
        .collect();
    format!(
        "{{\"cluster\":{},\"servers\":{{{}}}}}",
        object(&status.cluster),
        servers.join(",")
    )
}

fn object(map: &BTreeMap<String, String>) -> String {
    let fields: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{}:{}", json_string(k), json_value(v)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// Numbers stay numbers; everything else is a string.
fn json_value(value: &str) -> String {
    if !value.is_empty() && value.len() < 20 && value.bytes().all(|b| b.is_ascii_digit()) {
        value.to_string()
    } else {
        json_string(value)
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_table_and_json() {
        let mut status = ClusterStatus::default();
        status.cluster.insert("term".into(), "3".into());
        status.cluster.insert("leader".into(), "00aa".into());
        let mut server = BTreeMap::new();
        server.insert("role".into(), "leader".into());
        server.insert("lag".into(), "0".into());
        status.servers.insert("00aa".into(), server);
        let table = render_table(&status);
        assert!(table.starts_with("term 3  leader 00aa  servers 1\n"));
        assert!(table.contains("00aa  leader"));
        assert_eq!(
            render_json(&status),
            r#"{"cluster":{"leader":"00aa","term":3},"servers":{"00aa":{"lag":0,"role":"leader"}}}"#
        );
    }

    #[test]
    fn the_lb_group_is_shown_above_the_data_group() {
        let mut data = ClusterStatus::default();
        data.cluster.insert("term".into(), "5".into());
        data.cluster.insert("leader".into(), "00aa".into());
        let leader: BTreeMap<String, String> = [
            ("role", "leader"),
            ("voter", "1"),
            ("lb_id", "1"),
            ("lb_term", "2"),
            ("lb_last_index", "9"),
            ("lb_commit_index", "9"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let group = GroupStatus {
            lbs: vec![
                LbStatus {
                    addr: "127.0.0.1:11311".into(),
                    stats: Ok(leader),
                },
                LbStatus {
                    addr: "127.0.0.1:11312".into(),
                    stats: Err("cannot reach the LB".into()),
                },
            ],
            data,
        };
        let table = render_group_table(&group);
        assert!(table.starts_with("lbs 2\nlb "), "{table}");
        assert!(
            table.contains("127.0.0.1:11311  1   leader       1      2        9     9\n"),
            "{table}"
        );
        assert!(
            table.contains("127.0.0.1:11312  -   unreachable"),
            "{table}"
        );
        assert!(
            table.contains("term 5  leader 00aa  servers 0\n"),
            "{table}"
        );
        assert_eq!(
            render_group_json(&group),
            r#"{"lbs":{"127.0.0.1:11311":{"lb_commit_index":9,"lb_id":1,"lb_last_index":9,"lb_term":2,"role":"leader","voter":1},"127.0.0.1:11312":{"error":"cannot reach the LB"}},"cluster":{"leader":"00aa","term":5},"servers":{}}"#
        );
    }

    #[test]
    fn a_server_the_lb_has_not_heard_shows_as_unreachable() {
        let mut status = ClusterStatus::default();
        status.cluster.insert("term".into(), "4".into());
        status.cluster.insert("leader".into(), "00bb".into());
        for (id, role, reachable) in [("00aa", "leader", "0"), ("00bb", "leader", "1")] {
            let mut server = BTreeMap::new();
            server.insert("role".into(), role.into());
            server.insert("reachable".into(), reachable.into());
            status.servers.insert(id.into(), server);
        }
        let table = render_table(&status);
        assert!(table.contains("00aa  unreachable"), "{table}");
        assert!(table.contains("00bb  leader"), "{table}");
        // The JSON keeps the last report and says how fresh it is.
        assert!(render_json(&status).contains(r#""00aa":{"reachable":0,"role":"leader"}"#));
    }
}
