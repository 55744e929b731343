//! The `cluster` file's text format (DESIGN §3a): the cluster id and the
//! secret that authenticates every datagram. The LB writes it once; servers
//! are given the same file. Pure parsing and formatting; reading and writing
//! the file is the caller's.
//!
//! ```text
//! cluster-id 0123456789abcdef
//! secret 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
//! ```

use thiserror::Error;

use crate::frame::{ClusterId, SECRET_BYTES};

/// What a cluster file holds.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterFile {
    pub id: ClusterId,
    pub secret: [u8; SECRET_BYTES],
}

impl std::fmt::Debug for ClusterFile {
    // By hand: the secret must not end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterFile")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClusterFileError {
    #[error("line {0}: expected `cluster-id <16 hex digits>` or `secret <64 hex digits>`")]
    BadLine(usize),
    #[error("missing the `{0}` line")]
    Missing(&'static str),
}

impl ClusterFile {
    pub fn format(&self) -> String {
        let secret: String = self.secret.iter().map(|b| format!("{b:02x}")).collect();
        format!("cluster-id {:016x}\nsecret {secret}\n", self.id.0)
    }

    pub fn parse(text: &str) -> Result<ClusterFile, ClusterFileError> {
        let mut id = None;
        let mut secret = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || ClusterFileError::BadLine(n + 1);
            let (name, value) = line.split_once(' ').ok_or_else(bad)?;
            let value = value.trim();
            match name {
                "cluster-id" if value.len() == 16 => {
                    id = Some(ClusterId(
                        u64::from_str_radix(value, 16).map_err(|_| bad())?,
                    ));
                }
                "secret" if value.len() == 2 * SECRET_BYTES => {
                    let mut bytes = [0u8; SECRET_BYTES];
                    for (i, byte) in bytes.iter_mut().enumerate() {
                        let pair = value.get(2 * i..2 * i + 2).ok_or_else(bad)?;
                        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
                    }
                    secret = Some(bytes);
                }
                _ => return Err(bad()),
            }
        }
        Ok(ClusterFile {
            id: id.ok_or(ClusterFileError::Missing("cluster-id"))?,
            secret: secret.ok_or(ClusterFileError::Missing("secret"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let file = ClusterFile {
            id: ClusterId(0xfeed),
            secret: [7; SECRET_BYTES],
        };
        assert_eq!(ClusterFile::parse(&file.format()), Ok(file));
        assert_eq!(
            ClusterFile::parse("cluster-id 12\n"),
            Err(ClusterFileError::BadLine(1))
        );
        assert_eq!(
            ClusterFile::parse("cluster-id 000000000000000a\n"),
            Err(ClusterFileError::Missing("secret"))
        );
        assert!(!format!(
            "{:?}",
            ClusterFile::parse(
                &ClusterFile {
                    id: ClusterId(1),
                    secret: [0xab; 32]
                }
                .format()
            )
            .unwrap()
        )
        .contains("abab"));
    }
}
