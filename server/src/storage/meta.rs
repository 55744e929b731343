//! The `meta` file: this server's id and the current term, the two facts a
//! server must never forget (a promise for term T is only sent after T is on
//! disk here, DESIGN §3). Owns the file and its 36-byte format:
//!
//! ```text
//! [magic "STOREMTA"][version u8][reserved 7 zero bytes][server_id u64][current_term u64][crc32c u32]
//! ```
//!
//! Little endian; the CRC covers every byte before it. Written atomically
//! (temp file, fsync, rename, directory fsync). Called by the replica driver;
//! it must not be written from more than one thread.

use std::io::Write;
use std::path::Path;

use thiserror::Error;

use super::fsutil;
use super::StorageError;

/// The file's name inside the data directory.
pub const META_FILE: &str = "meta";

/// Written first, then renamed over [`META_FILE`].
pub const META_TMP_FILE: &str = "meta.tmp";

pub const META_MAGIC: [u8; 8] = *b"STOREMTA";

/// Version of this format; bump it on any change.
pub const META_VERSION: u8 = 1;

/// Magic, version, reserved, server id, current term, CRC.
pub const META_BYTES: usize = 36;

/// What the meta file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub server_id: u64,
    pub current_term: u64,
}

/// How a meta file's bytes are wrong; `offset` is where the problem is.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MetaError {
    #[error("meta file is {0} bytes, expected {META_BYTES}")]
    Length(usize),
    #[error("bad meta magic")]
    BadMagic,
    #[error("unsupported meta version {0} (this build reads version {META_VERSION})")]
    UnsupportedVersion(u8),
    #[error("reserved bytes are not zero")]
    ReservedNonZero,
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
}

impl MetaError {
    /// Byte offset of the damaged field.
    pub fn offset(&self) -> u64 {
        match self {
            MetaError::Length(_) | MetaError::BadMagic => 0,
            MetaError::UnsupportedVersion(_) => 8,
            MetaError::ReservedNonZero => 9,
            MetaError::CrcMismatch { .. } => 32,
        }
    }
}

impl Meta {
    pub fn encode(&self) -> [u8; META_BYTES] {
        let mut out = [0u8; META_BYTES];
        out[..8].copy_from_slice(&META_MAGIC);
        out[8] = META_VERSION;
        out[16..24].copy_from_slice(&self.server_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.current_term.to_le_bytes());
        let crc = crc32c::crc32c(&out[..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Meta, MetaError> {
        if bytes.len() != META_BYTES {
            return Err(MetaError::Length(bytes.len()));
        }
        // The CRC first: if it matches, a bad field is a format problem,
        // not damage.
        let stored = u32::from_le_bytes([bytes[32], bytes[33], bytes[34], bytes[35]]);
        let computed = crc32c::crc32c(&bytes[..32]);
        if stored != computed {
            return Err(MetaError::CrcMismatch { stored, computed });
        }
        if bytes[..8] != META_MAGIC {
            return Err(MetaError::BadMagic);
        }
        if bytes[8] != META_VERSION {
            return Err(MetaError::UnsupportedVersion(bytes[8]));
        }
        if bytes[9..16].iter().any(|b| *b != 0) {
            return Err(MetaError::ReservedNonZero);
        }
        let field = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(raw)
        };
        Ok(Meta {
            server_id: field(16),
            current_term: field(24),
        })
    }
}

/// Reads `data_dir/meta`; `None` on a server's first start. A damaged file
/// is an error naming it: guessing a term could break the one-vote-per-term
/// promise.
pub fn load(data_dir: &Path) -> Result<Option<Meta>, StorageError> {
    fsutil::remove_leftover(data_dir, META_TMP_FILE)?;
    let path = data_dir.join(META_FILE);
    let Some(bytes) = fsutil::read_if_exists(&path)? else {
        return Ok(None);
    };
    Meta::decode(&bytes)
        .map(Some)
        .map_err(|e| StorageError::Corrupt {
            what: "meta file",
            path,
            offset: e.offset(),
            reason: e.to_string(),
        })
}

/// Durably replaces `data_dir/meta`; when this returns, a crash cannot bring
/// back an older term.
pub fn store(data_dir: &Path, meta: &Meta) -> Result<(), StorageError> {
    fsutil::replace_file(data_dir, META_FILE, META_TMP_FILE, META_BYTES, |out| {
        out.write_all(&meta.encode())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_dir::TestDir;

    /// Pins the format: a change here makes every existing meta file unreadable.
    #[test]
    fn golden_bytes() {
        let meta = Meta {
            server_id: 3,
            current_term: 0x0102,
        };
        let bytes = meta.encode();
        let body: &[u8] = &[
            b'S', b'T', b'O', b'R', b'E', b'M', b'T', b'A', // magic
            1,    // version
            0, 0, 0, 0, 0, 0, 0, // reserved
            3, 0, 0, 0, 0, 0, 0, 0, // server id
            0x02, 0x01, 0, 0, 0, 0, 0, 0, // current term
        ];
        assert_eq!(&bytes[..32], body);
        assert_eq!(&bytes[32..], &crc32c::crc32c(body).to_le_bytes());
        assert_eq!(Meta::decode(&bytes), Ok(meta));
    }

    #[test]
    fn every_byte_flip_is_detected() {
        let bytes = Meta {
            server_id: 1,
            current_term: 2,
        }
        .encode();
        for at in 0..META_BYTES {
            let mut damaged = bytes;
            damaged[at] ^= 0x10;
            assert!(Meta::decode(&damaged).is_err(), "flip at {at}");
        }
        assert_eq!(Meta::decode(&bytes[..35]), Err(MetaError::Length(35)));
    }

    #[test]
    fn store_load_roundtrip() {
        let dir = TestDir::new();
        assert_eq!(load(dir.path()).unwrap(), None);
        let first = Meta {
            server_id: 7,
            current_term: 1,
        };
        store(dir.path(), &first).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(first));
        let second = Meta {
            server_id: 7,
            current_term: 9,
        };
        store(dir.path(), &second).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(second));
        assert!(!dir.path().join(META_TMP_FILE).exists());
    }

    #[test]
    fn leftover_tmp_is_removed_and_corruption_names_the_file() {
        let dir = TestDir::new();
        store(
            dir.path(),
            &Meta {
                server_id: 1,
                current_term: 4,
            },
        )
        .unwrap();
        std::fs::write(dir.path().join(META_TMP_FILE), b"half").unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().current_term, 4);
        assert!(!dir.path().join(META_TMP_FILE).exists());

        let path = dir.path().join(META_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[24] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let message = load(dir.path()).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("crc mismatch"), "{message}");
    }
}
