//! Who read what, per server and best effort: the meta protocol's `h`
//! (read before?) and `l` (seconds since last access), and `me`'s `fetch`
//! and `la`. Reads are not log entries (DESIGN §5a), so no two replicas
//! agree on them, and none has to: memcached's doc makes them hints.
//!
//! A fixed table of [`ACCESS_SLOTS`] slots, one per key hash, each holding
//! a mark of the item read there (its key and unique) and when. A read
//! marks its slot; a write changes the item's unique, so its old mark no
//! longer matches and the item reads as not fetched, as memcached's fresh
//! item. Two keys sharing a slot overwrite each other's marks: the table
//! forgets (reports `h0`, `l` since the write), it never invents a read,
//! and it never grows.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots in the table (16 bytes each: 1 MiB).
pub const ACCESS_SLOTS: usize = 1 << 16;

/// What a server knew of an item's reads before the current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accessed {
    /// This server served the item, as it now is, before.
    pub fetched: bool,
    /// When it last did (unix seconds), if it did.
    pub read_s: Option<u64>,
}

impl Accessed {
    /// Nothing known: a miss, or an item not read here since written.
    pub const NONE: Accessed = Accessed {
        fetched: false,
        read_s: None,
    };

    /// The item's last access as this server knows it: its last read
    /// here, or its last write (`updated_s`), whichever came later.
    pub fn last_access_s(&self, updated_s: u64) -> u64 {
        updated_s.max(self.read_s.unwrap_or(0))
    }
}

struct Slot {
    /// [`mark`] of the item last read here; 0: none.
    mark: AtomicU64,
    read_s: AtomicU64,
}

pub struct AccessTable {
    slots: Box<[Slot]>,
}

impl Default for AccessTable {
    fn default() -> Self {
        Self::new()
    }
}

impl AccessTable {
    pub fn new() -> AccessTable {
        AccessTable {
            slots: (0..ACCESS_SLOTS)
                .map(|_| Slot {
                    mark: AtomicU64::new(0),
                    read_s: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    /// What is known of the item (`key` with unique `cas`), without
    /// counting this look as a read (`me`, `mg ... u`).
    pub fn peek(&self, key: &[u8], cas: u64) -> Accessed {
        let (slot, mark) = self.slot(key, cas);
        Self::known(slot, mark)
    }

    /// What was known of the item before this read at `now_s`, which is
    /// then remembered.
    pub fn read(&self, key: &[u8], cas: u64, now_s: u64) -> Accessed {
        let (slot, mark) = self.slot(key, cas);
        let before = Self::known(slot, mark);
        // Two stores, not one atomic pair: a racing read may pair one
        // item's mark with another's time, within the same second or so.
        slot.read_s.store(now_s, Ordering::Relaxed);
        slot.mark.store(mark, Ordering::Relaxed);
        before
    }

    fn known(slot: &Slot, mark: u64) -> Accessed {
        if slot.mark.load(Ordering::Relaxed) == mark {
            Accessed {
                fetched: true,
                read_s: Some(slot.read_s.load(Ordering::Relaxed)),
            }
        } else {
            Accessed::NONE
        }
    }

    fn slot(&self, key: &[u8], cas: u64) -> (&Slot, u64) {
        let hash = foldhash::fast::FixedState::default().hash_one(key);
        let slot = &self.slots[hash as usize % ACCESS_SLOTS];
        // Never 0, which stands for an empty slot.
        let mark = foldhash::fast::FixedState::default().hash_one((hash, cas)) | 1;
        (slot, mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_known_until_the_item_changes() {
        let table = AccessTable::new();
        let never = Accessed::NONE;
        assert_eq!(table.peek(b"k", 5), never);
        assert_eq!(table.read(b"k", 5, 100), never);
        let read = Accessed {
            fetched: true,
            read_s: Some(100),
        };
        assert_eq!(table.peek(b"k", 5), read);
        assert_eq!(table.read(b"k", 5, 130), read);
        assert_eq!(table.peek(b"k", 5).read_s, Some(130));
        // Written since (a new unique): not fetched, as a new item.
        assert_eq!(table.peek(b"k", 6), never);
        assert_eq!(table.peek(b"other", 5), never);
    }
}
