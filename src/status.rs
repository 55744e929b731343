//! `store status`: asks the LB for `stats` over its TCP port and shows the
//! cluster: term, leader, and per server its role, addresses, indexes, lag
//! and last heartbeat, as a table or as JSON.

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

/// Fetches `stats` from the first LB of `lbs` that answers (a `--lb` list,
/// [`client::discovery::lb_list`]); the error names every LB's failure.
pub fn fetch_from_any(lbs: &[String], timeout: Duration) -> anyhow::Result<ClusterStatus> {
    let mut failures = Vec::new();
    for lb in lbs {
        match fetch(lb, timeout) {
            Ok(status) => return Ok(status),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    bail!("no LB answered: {}", failures.join("; "))
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
        match name
            .strip_prefix("server.")
            .and_then(|rest| rest.split_once('.'))
        {
            Some((id, field)) => {
                status
                    .servers
                    .entry(id.to_string())
                    .or_default()
                    .insert(field.to_string(), value.to_string());
            }
            None => {
                status.cluster.insert(name.to_string(), value.to_string());
            }
        }
    }
    bail!("the LB closed the connection before END")
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
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    out.push_str(&line(columns.iter().map(|(t, _)| t.to_string()).collect()));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// The same as JSON: `{"cluster": {...}, "servers": {"<id>": {...}}}`.
pub fn render_json(status: &ClusterStatus) -> String {
    fn object(map: &BTreeMap<String, String>) -> String {
        let fields: Vec<String> = map
            .iter()
            .map(|(k, v)| format!("{}:{}", json_string(k), json_value(v)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
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
