//! How an LB finds its place in a running LB group (`store addlb --join`,
//! DESIGN §3c): the group's list of LBs, from the file this LB keeps of
//! the last list it applied, else from the first of the given LBs whose
//! `lbs` has it.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use server::storage::{read_if_exists, replace_file, StorageError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::group::Peers;

/// The file in an LB's data directory that holds the LB group's list as
/// this LB last applied it ([`crate::group::Peers::encode`]), so that a
/// restart knows every LB even when none answers.
pub const MEMBERS_FILE: &str = "lb-members";
const MEMBERS_TMP_FILE: &str = "lb-members.tmp";

/// How long one LB may take to answer `lbs`.
const ASK_MS: u64 = 2_000;

/// The longest `lbs` reply: seven lines of at most 70 bytes and a few more.
const REPLY_BYTES_MAX: usize = 1024;

/// How long a joining LB looks for a list that has it, and how long it
/// waits between rounds of asking.
const JOIN_WAIT_MS: u64 = 10_000;
const JOIN_RETRY_MS: u64 = 200;

/// Why this LB found no place in the group.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no LB given (--join) has this LB in its list within {JOIN_WAIT_MS} ms: {0}")]
    NoPlace(String),
}

/// The list this LB kept, if it kept one.
pub fn load_members(data_dir: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    read_if_exists(&data_dir.join(MEMBERS_FILE))
}

/// Keeps `list` as this LB's last applied list, whole or not at all.
pub fn store_members(data_dir: &Path, list: &[u8]) -> Result<(), StorageError> {
    replace_file(
        data_dir,
        MEMBERS_FILE,
        MEMBERS_TMP_FILE,
        list.len(),
        |out| out.write_all(list),
    )
}

/// This LB's place in the group, from the first of `lbs` whose list has
/// it: right after `add-lb` an LB that does not lead may not have applied
/// the list that adds it yet, so each is asked again for up to
/// [`JOIN_WAIT_MS`].
pub async fn find_place(lbs: &[SocketAddr], listen: IpAddr, port: u16) -> Result<Peers, AskError> {
    let deadline = Instant::now() + Duration::from_millis(JOIN_WAIT_MS);
    loop {
        let mut why = Vec::new();
        for lb in lbs {
            match timeout(Duration::from_millis(ASK_MS), ask_one(*lb)).await {
                Ok(Ok(list)) => match Peers::join(&list, listen, port) {
                    Ok(peers) => return Ok(peers),
                    Err(e) => why.push(format!("{lb}: {e}")),
                },
                Ok(Err(e)) => why.push(format!("{lb}: {e}")),
                Err(_) => why.push(format!("{lb}: no answer within {ASK_MS} ms")),
            }
        }
        if Instant::now() >= deadline {
            return Err(AskError::NoPlace(why.join("; ")));
        }
        tokio::time::sleep(Duration::from_millis(JOIN_RETRY_MS)).await;
    }
}

async fn ask_one(lb: SocketAddr) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(lb).await?;
    stream.write_all(b"lbs\r\n").await?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 256];
    while !reply.ends_with(b"END\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || reply.len() + n > REPLY_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no whole `lbs` reply",
            ));
        }
        reply.extend_from_slice(&chunk[..n]);
    }
    reply.truncate(reply.len() - b"END\r\n".len());
    if reply.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "an LB alone (no --peers): there is no group to join",
        ));
    }
    // The list's own format has bare newlines.
    Ok(reply.into_iter().filter(|b| *b != b'\r').collect())
}
