//! Finding the servers of a cluster: the LB answers `get-servers\r\n` with
//! one `ip:port\r\n` line per server, the leader's first, then `end\r\n`
//! (DESIGN §3a). The `client` binary uses it for `--lb`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// A `get-servers` reply is at most this long (a few hundred servers).
pub const GET_SERVERS_REPLY_BYTES_MAX: usize = 64 * 1024;

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
