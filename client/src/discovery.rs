//! Finding the servers of a cluster: the LB answers `get-servers\r\n` with
//! one `ip:port\r\n` line per server, the leader's first, then `end\r\n`
//! (DESIGN §3a). The `client` binary uses it for `--lb`, which may name
//! several LBs ([`lb_list`]): each is asked in turn until one answers, so
//! an LB that is down costs one connection attempt, not the command.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// A `get-servers` reply is at most this long (a few hundred servers).
pub const GET_SERVERS_REPLY_BYTES_MAX: usize = 64 * 1024;

/// The LBs a `--lb` names: `HOST:PORT[,HOST:PORT...]`, in the order given
/// (spaces around commas allowed). None for an empty list.
pub fn lb_list(text: &str) -> Option<Vec<String>> {
    let lbs: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|lb| !lb.is_empty())
        .map(str::to_string)
        .collect();
    (!lbs.is_empty()).then_some(lbs)
}

/// Asks each LB of `lbs` in turn for the servers, leader first; the first
/// answer, and which LB gave it. With every LB failing, the last LB's error.
pub async fn get_servers_from_any(
    lbs: &[String],
    timeout: Duration,
) -> Result<(String, Vec<SocketAddr>)> {
    let mut last = Error::UnexpectedReply("no LB given".into());
    for lb in lbs {
        match get_servers(lb, timeout).await {
            Ok(servers) => return Ok((lb.clone(), servers)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Asks the LB at `lb` for the servers, leader first.
pub async fn get_servers(lb: &str, timeout: Duration) -> Result<Vec<SocketAddr>> {
    let exchange = async {
        let mut stream = TcpStream::connect(lb).await.map_err(Error::Io)?;
        stream
            .write_all(b"get-servers\r\n")
            .await
            .map_err(Error::Io)?;
        let mut reply = Vec::new();
        loop {
            if let Some(servers) = parse_servers(&reply)? {
                return Ok(servers);
            }
            if reply.len() > GET_SERVERS_REPLY_BYTES_MAX {
                return Err(Error::UnexpectedReply("get-servers reply too long".into()));
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.map_err(Error::Io)?;
            if n == 0 {
                return Err(Error::Closed);
            }
            reply.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::Timeout(timeout))?
}

/// Parses a complete `get-servers` reply; `None` until `end` has arrived.
pub fn parse_servers(reply: &[u8]) -> Result<Option<Vec<SocketAddr>>> {
    let mut servers = Vec::new();
    let mut rest = reply;
    while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
        let line = std::str::from_utf8(&rest[..newline])
            .map_err(|_| Error::UnexpectedReply("get-servers reply is not text".into()))?
            .trim_end_matches('\r');
        rest = &rest[newline + 1..];
        if line == "end" {
            return Ok(Some(servers));
        }
        let addr = line.parse().map_err(|_| {
            Error::UnexpectedReply(format!("not an address in get-servers: {line:?}"))
        })?;
        servers.push(addr);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lb_lists_keep_their_order_and_refuse_to_be_empty() {
        assert_eq!(
            lb_list("10.0.0.1:7000, 10.0.0.2:7000,10.0.0.3:7000"),
            Some(vec![
                "10.0.0.1:7000".to_string(),
                "10.0.0.2:7000".to_string(),
                "10.0.0.3:7000".to_string()
            ])
        );
        assert_eq!(
            lb_list("127.0.0.1:7000"),
            Some(vec!["127.0.0.1:7000".to_string()])
        );
        assert_eq!(lb_list(""), None);
        assert_eq!(lb_list(" , "), None);
    }

    #[test]
    fn parses_leader_first() {
        let reply = b"127.0.0.1:7001\r\n127.0.0.1:7002\r\nend\r\n";
        let servers = parse_servers(reply).unwrap().unwrap();
        assert_eq!(servers[0], "127.0.0.1:7001".parse::<SocketAddr>().unwrap());
        assert_eq!(servers.len(), 2);
        assert!(parse_servers(b"127.0.0.1:7001\r\n").unwrap().is_none());
        assert!(parse_servers(b"bogus\r\nend\r\n").is_err());
        assert_eq!(parse_servers(b"end\r\n").unwrap().unwrap(), vec![]);
    }
}
