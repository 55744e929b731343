//! The LBs a data server sends to (DESIGN §3c): its `--lb` list at first,
//! then the LB group's list as the acting LB announces it
//! ([`Message::Lbs`](data::frame::Message::Lbs)), so that an LB added at
//! run time hears every server and one removed is no longer sent to. The
//! last list taken is kept in the group's directory, so a restart with an
//! old `--lb` still reaches the group.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use data::frame::LBS_MAX;

use crate::storage::{read_if_exists, replace_file, StorageError};

/// The file in the group's directory that holds the last list taken.
pub const LBS_FILE: &str = "lbs";
const LBS_TMP_FILE: &str = "lbs.tmp";

/// The LBs this server sends to, and which list they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownLbs {
    /// Never empty.
    pub addrs: Vec<SocketAddr>,
    /// The epoch of the LB group's list they are; `None` while they are
    /// the flags' only.
    pub epoch: Option<u64>,
}

impl KnownLbs {
    /// The flags' list, with the kept list's LBs and epoch when there is
    /// one (the flags may name an LB the kept list lacks; sending to a
    /// removed LB too costs a datagram it drops).
    pub fn new(flags: &[SocketAddr], kept: Option<KnownLbs>) -> KnownLbs {
        assert!(!flags.is_empty(), "a server knows at least one LB");
        let Some(kept) = kept else {
            return KnownLbs {
                addrs: flags.to_vec(),
                epoch: None,
            };
        };
        let mut addrs = kept.addrs;
        for addr in flags {
            if !addrs.contains(addr) {
                addrs.push(*addr);
            }
        }
        KnownLbs {
            addrs,
            epoch: kept.epoch,
        }
    }

    /// Takes the LB group's list `lbs`, numbered `epoch`, unless it is
    /// older than the one held or empty; whether the LBs changed.
    pub fn learn(&mut self, epoch: u64, lbs: &[SocketAddr]) -> bool {
        if lbs.is_empty() || lbs.len() > LBS_MAX || self.epoch.is_some_and(|have| epoch < have) {
            return false;
        }
        self.epoch = Some(epoch);
        if self.addrs == lbs {
            return false;
        }
        self.addrs = lbs.to_vec();
        true
    }

    /// The kept list in `dir`, if one was kept and reads.
    pub fn load(dir: &Path) -> Option<KnownLbs> {
        let bytes = read_if_exists(&dir.join(LBS_FILE)).ok()??;
        let text = String::from_utf8(bytes).ok()?;
        let mut lines = text.lines();
        let epoch = lines.next()?.strip_prefix("epoch ")?.parse().ok()?;
        let addrs: Vec<SocketAddr> = lines.map(|l| l.parse().ok()).collect::<Option<_>>()?;
        (!addrs.is_empty() && addrs.len() <= LBS_MAX).then_some(KnownLbs {
            addrs,
            epoch: Some(epoch),
        })
    }

    /// Keeps this list in `dir`, whole or not at all.
    pub fn store(&self, dir: &Path) -> Result<(), StorageError> {
        let mut text = format!("epoch {}\n", self.epoch.unwrap_or(0));
        for addr in &self.addrs {
            text.push_str(&format!("{addr}\n"));
        }
        replace_file(dir, LBS_FILE, LBS_TMP_FILE, text.len(), |out| {
            out.write_all(text.as_bytes())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(ports: &[u16]) -> Vec<SocketAddr> {
        ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect()
    }

    #[test]
    fn a_list_is_taken_unless_older_and_replaces_the_flags() {
        let mut known = KnownLbs::new(&addrs(&[1]), None);
        assert!(known.learn(0, &addrs(&[1, 2, 3])), "the founders' list");
        assert!(known.learn(2, &addrs(&[2, 3, 4])));
        // A deposed LB's older list changes nothing.
        assert!(!known.learn(1, &addrs(&[1, 2, 3])));
        assert!(!known.learn(2, &[]));
        assert_eq!(known.addrs, addrs(&[2, 3, 4]));
        assert_eq!(known.epoch, Some(2));
    }

    #[test]
    fn the_kept_list_survives_a_restart_with_the_flags_added() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(KnownLbs::load(dir.path()), None);
        let mut known = KnownLbs::new(&addrs(&[1]), None);
        known.learn(3, &addrs(&[2, 4]));
        known.store(dir.path()).unwrap();
        let kept = KnownLbs::load(dir.path());
        assert_eq!(kept.as_ref(), Some(&known));
        let restarted = KnownLbs::new(&addrs(&[1, 2]), kept);
        assert_eq!(restarted.addrs, addrs(&[2, 4, 1]));
        assert_eq!(restarted.epoch, Some(3));
    }
}
