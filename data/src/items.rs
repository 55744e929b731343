//! Where the state keeps its items: every key, value and item field packed
//! into large shared segments, found through a hash table of 8-byte
//! locations.
//!
//! Why not a `HashMap<Bytes, Item>`: with a million 100-byte items that map
//! costs ~425 MB (a 97-byte bucket per slot, two small allocations and a
//! shared-buffer header per item), twice memcached's footprint for the same
//! items. Here an item is its bytes plus a 33-byte header, written end to
//! end into 1 MiB segments, and the table holds one `u64` per slot.
//!
//! Segments are reference counted: [`Items::freeze`] takes a consistent view
//! for a keystore file by cloning the table's locations and the segments'
//! handles (no item is copied), and the state carries on writing into new
//! segments while the view is written out. A segment is never changed while
//! anyone else holds it.
//!
//! Overwritten and deleted items leave dead bytes behind; once they outweigh
//! the live ones, each write moves the live items of the emptiest segment to
//! the current one and frees it, so memory stays within about twice the live
//! bytes, and a write does at most one segment's worth of copying.
//!
//! Pure and deterministic: a fixed hash seed, no clock, no I/O. Called only
//! by [`crate::state::State`].

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use crate::exptime::NEVER;

/// Bytes per segment; a larger item gets a segment of its own.
pub const SEGMENT_BYTES: usize = 1024 * 1024;

/// Dead bytes tolerated before compaction starts, whatever the live bytes:
/// a small state is not worth the copying.
const COMPACT_DEAD_BYTES_MIN: u64 = 4 * SEGMENT_BYTES as u64;

/// Record layout: key length u8, value length u32, flags u32, exptime u64,
/// updated u64, cas u64 (little endian), lease u8, then the key, then the
/// value.
const KEY_LEN_AT: usize = 0;
const VALUE_LEN_AT: usize = 1;
const FLAGS_AT: usize = 5;
const EXPTIME_AT: usize = 9;
const UPDATED_AT: usize = 17;
const CAS_AT: usize = 25;
const LEASE_AT: usize = 33;
pub const RECORD_HEADER_BYTES: usize = 34;

/// A fixed seed: the table's layout, and so the order items are listed in,
/// is the same on every replica and every run.
const HASH_SEED: u64 = 0x5354_4f52_4549_5445;

/// The fields of an item other than its key and value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub flags: u32,
    pub exptime: u64,
    pub updated_s: u64,
    pub cas: u64,
    /// The meta protocol's lease bits (`crate::state::lease`).
    pub lease: u8,
}

/// One item as stored: a view into its segment.
#[derive(Clone, Copy)]
pub struct ItemRef<'a> {
    record: &'a [u8],
}

impl<'a> ItemRef<'a> {
    fn at(segment: &'a [u8], offset: usize) -> ItemRef<'a> {
        let header = &segment[offset..offset + RECORD_HEADER_BYTES];
        let len = RECORD_HEADER_BYTES
            + usize::from(header[KEY_LEN_AT])
            + le_u32(header, VALUE_LEN_AT) as usize;
        ItemRef {
            record: &segment[offset..offset + len],
        }
    }

    fn key_len(&self) -> usize {
        usize::from(self.record[KEY_LEN_AT])
    }

    pub fn key(&self) -> &'a [u8] {
        &self.record[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + self.key_len()]
    }

    pub fn data(&self) -> &'a [u8] {
        &self.record[RECORD_HEADER_BYTES + self.key_len()..]
    }

    pub fn flags(&self) -> u32 {
        le_u32(self.record, FLAGS_AT)
    }

    pub fn exptime(&self) -> u64 {
        le_u64(self.record, EXPTIME_AT)
    }

    pub fn updated_s(&self) -> u64 {
        le_u64(self.record, UPDATED_AT)
    }

    pub fn cas(&self) -> u64 {
        le_u64(self.record, CAS_AT)
    }

    pub fn lease(&self) -> u8 {
        self.record[LEASE_AT]
    }

    pub fn meta(&self) -> Meta {
        Meta {
            flags: self.flags(),
            exptime: self.exptime(),
            updated_s: self.updated_s(),
            cas: self.cas(),
            lease: self.lease(),
        }
    }

    fn len(&self) -> usize {
        self.record.len()
    }
}

impl fmt::Debug for ItemRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemRef")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("data_len", &self.data().len())
            .field("meta", &self.meta())
            .finish()
    }
}

/// Where a record starts: segment number in the high half, offset in the low.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Loc(u64);

impl Loc {
    fn new(segment: usize, offset: usize) -> Loc {
        Loc(((segment as u64) << 32) | offset as u64)
    }

    fn segment(self) -> usize {
        (self.0 >> 32) as usize
    }

    fn offset(self) -> usize {
        (self.0 & u64::from(u32::MAX)) as usize
    }
}

#[derive(Default)]
struct Slot {
    /// `None`: a free slot, reused by the next new segment.
    data: Option<Arc<Vec<u8>>>,
    /// Bytes of the records in it that the table still points at.
    live: u64,
}

/// The items of a state.
pub struct Items {
    table: HashTable<Loc>,
    hasher: foldhash::fast::FixedState,
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    /// The segment new records go to, while no one else holds it.
    active: Option<usize>,
    /// Bytes of every record held, live or dead, and of the live ones.
    held_bytes: u64,
    live_bytes: u64,
    /// Key and value bytes of the live items (memcached's `bytes`).
    kv_bytes: u64,
    /// Items with an expiry: while there are none (and no flush is
    /// pending) nothing can become invisible, and the reclaimer rests.
    expiring: u64,
    /// [`SEGMENT_BYTES`] and [`COMPACT_DEAD_BYTES_MIN`], smaller in tests
    /// so that a few items exercise many segments and compaction.
    segment_bytes: usize,
    compact_dead_bytes_min: u64,
}

impl Default for Items {
    fn default() -> Self {
        Items::new()
    }
}

impl fmt::Debug for Items {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Items")
            .field("len", &self.len())
            .field("segments", &(self.slots.len() - self.free_slots.len()))
            .field("held_bytes", &self.held_bytes)
            .field("live_bytes", &self.live_bytes)
            .finish()
    }
}

impl Items {
    pub fn new() -> Items {
        Items::with_sizes(SEGMENT_BYTES, COMPACT_DEAD_BYTES_MIN)
    }

    fn with_sizes(segment_bytes: usize, compact_dead_bytes_min: u64) -> Items {
        Items {
            table: HashTable::new(),
            hasher: foldhash::fast::FixedState::with_seed(HASH_SEED),
            slots: Vec::new(),
            free_slots: Vec::new(),
            active: None,
            held_bytes: 0,
            live_bytes: 0,
            kv_bytes: 0,
            expiring: 0,
            segment_bytes,
            compact_dead_bytes_min,
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Key and value bytes of the items held.
    pub fn kv_bytes(&self) -> u64 {
        self.kv_bytes
    }

    /// Bytes of the records the table points at (header, key and value).
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Items that have an expiry time.
    pub fn expiring(&self) -> u64 {
        self.expiring
    }

    /// Bytes of segments held (live and dead records), for tests and stats.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    pub fn get(&self, key: &[u8]) -> Option<ItemRef<'_>> {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        self.table
            .find(hash, |loc| item_at(slots, *loc).key() == key)
            .map(|loc| item_at(slots, *loc))
    }

    /// Every item, in table order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = ItemRef<'_>> {
        let slots = &self.slots;
        self.table.iter().map(move |loc| item_at(slots, *loc))
    }

    /// Visits the items in up to `buckets_max` of the table's buckets from
    /// bucket `from` on, in bucket order, until `visit` returns false; returns
    /// the bucket to go on from (the refused item's), 0 after the last. A cursor for walking the
    /// table a bounded step at a time: a resize between steps may make a
    /// walk skip or repeat some items, never read out of bounds.
    pub fn scan(
        &self,
        from: usize,
        buckets_max: usize,
        mut visit: impl FnMut(ItemRef<'_>) -> bool,
    ) -> usize {
        let buckets = self.table.num_buckets();
        let end = from.saturating_add(buckets_max).min(buckets);
        let mut bucket = from;
        while bucket < end {
            if let Some(loc) = self.table.get_bucket(bucket) {
                // Refused: the next step starts with this item.
                if !visit(item_at(&self.slots, *loc)) {
                    break;
                }
            }
            bucket += 1;
        }
        if bucket >= buckets {
            0
        } else {
            bucket
        }
    }

    /// Stores `key` with the value made of `parts` joined, replacing any
    /// item of that key.
    pub fn insert(&mut self, key: &[u8], parts: &[&[u8]], meta: Meta) {
        assert!(
            !key.is_empty() && key.len() <= usize::from(u8::MAX),
            "keys are 1..=250 bytes"
        );
        let value_len: usize = parts.iter().map(|p| p.len()).sum();
        let value_len = u32::try_from(value_len).expect("values are at most ITEM_BYTES_MAX");
        let mut header = [0u8; RECORD_HEADER_BYTES];
        header[KEY_LEN_AT] = key.len() as u8;
        header[VALUE_LEN_AT..FLAGS_AT].copy_from_slice(&value_len.to_le_bytes());
        header[FLAGS_AT..EXPTIME_AT].copy_from_slice(&meta.flags.to_le_bytes());
        header[EXPTIME_AT..UPDATED_AT].copy_from_slice(&meta.exptime.to_le_bytes());
        header[UPDATED_AT..CAS_AT].copy_from_slice(&meta.updated_s.to_le_bytes());
        header[CAS_AT..LEASE_AT].copy_from_slice(&meta.cas.to_le_bytes());
        header[LEASE_AT] = meta.lease;
        let mut record: Vec<&[u8]> = Vec::with_capacity(parts.len() + 2);
        record.push(&header);
        record.push(key);
        record.extend_from_slice(parts);
        let loc = self.write_record(&record);
        self.place(key, loc);
        self.kv_bytes += (key.len() + value_len as usize) as u64;
        self.maybe_compact();
    }

    /// Where `key`'s item is.
    fn locate(&self, key: &[u8]) -> Option<Loc> {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        self.table
            .find(hash, |loc| item_at(slots, *loc).key() == key)
            .copied()
    }

    /// Sets the expiry of `key`'s item; false if there is none.
    pub fn set_exptime(&mut self, key: &[u8], exptime: u64) -> bool {
        let Some(loc) = self.locate(key) else {
            return false;
        };
        // In place when no keystore writer shares the segment.
        let old = item_at(&self.slots, loc).exptime();
        let slot = &mut self.slots[loc.segment()];
        if let Some(segment) = slot.data.as_mut().and_then(Arc::get_mut) {
            let at = loc.offset() + EXPTIME_AT;
            segment[at..at + 8].copy_from_slice(&exptime.to_le_bytes());
            self.expiring -= u64::from(old != NEVER);
            self.expiring += u64::from(exptime != NEVER);
            return true;
        }
        let item = item_at(&self.slots, loc);
        let mut meta = item.meta();
        meta.exptime = exptime;
        let value = item.data().to_vec();
        self.insert(key, &[&value], meta);
        true
    }

    /// Sets the lease bits of `key`'s item; false if there is none.
    pub fn set_lease(&mut self, key: &[u8], lease: u8) -> bool {
        let Some(loc) = self.locate(key) else {
            return false;
        };
        // In place when no keystore writer shares the segment.
        let slot = &mut self.slots[loc.segment()];
        if let Some(segment) = slot.data.as_mut().and_then(Arc::get_mut) {
            segment[loc.offset() + LEASE_AT] = lease;
            return true;
        }
        let item = item_at(&self.slots, loc);
        let mut meta = item.meta();
        meta.lease = lease;
        let value = item.data().to_vec();
        self.insert(key, &[&value], meta);
        true
    }

    /// Removes `key`'s item; false if there is none.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        let Ok(entry) = self
            .table
            .find_entry(hash, |loc| item_at(slots, *loc).key() == key)
        else {
            return false;
        };
        let (loc, _) = entry.remove();
        self.release(loc);
        self.maybe_compact();
        true
    }

    /// Makes room for `additional` more items without growing the table
    /// on the way (each growth reads every key back out of the segments).
    pub fn reserve(&mut self, additional: usize) {
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.table
            .reserve(additional, |l| hasher.hash_one(item_at(slots, *l).key()));
    }

    /// Gives back table space a generous `reserve` did not need.
    pub fn shrink_to_fit(&mut self) {
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.table
            .shrink_to_fit(|l| hasher.hash_one(item_at(slots, *l).key()));
    }

    /// Removes every item.
    pub fn clear(&mut self) {
        *self = Items::with_sizes(self.segment_bytes, self.compact_dead_bytes_min);
    }

    /// A consistent view of every item as of now, for writing a keystore
    /// file while this store goes on changing. Copies the table's locations
    /// (8 bytes per item), not the items.
    pub fn freeze(&self) -> Frozen {
        // The active segment is shared from now on: the next write opens a
        // new one (see `write_record`).
        Frozen {
            segments: self.slots.iter().map(|s| s.data.clone()).collect(),
            locs: self.table.iter().copied().collect(),
        }
    }

    // ---- internals ----

    /// Points the table at `loc` for `key`, releasing the record it replaces.
    fn place(&mut self, key: &[u8], loc: Loc) {
        let hash = self.hasher.hash_one(key);
        let (slots, hasher) = (&self.slots, &self.hasher);
        let entry = self.table.entry(
            hash,
            |l| item_at(slots, *l).key() == key,
            |l| hasher.hash_one(item_at(slots, *l).key()),
        );
        self.expiring += u64::from(item_at(slots, loc).exptime() != NEVER);
        let old = match entry {
            hashbrown::hash_table::Entry::Occupied(mut occupied) => {
                Some(std::mem::replace(occupied.get_mut(), loc))
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(loc);
                None
            }
        };
        if let Some(old) = old {
            self.release(old);
        }
    }

    /// The record at `loc` is no longer pointed at.
    fn release(&mut self, loc: Loc) {
        let item = item_at(&self.slots, loc);
        let (len, kv) = (
            item.len() as u64,
            (item.key().len() + item.data().len()) as u64,
        );
        self.kv_bytes -= kv;
        self.live_bytes -= len;
        self.expiring -= u64::from(item.exptime() != NEVER);
        let slot = &mut self.slots[loc.segment()];
        slot.live -= len;
        if slot.live == 0 && self.active != Some(loc.segment()) {
            self.free_segment(loc.segment());
        }
    }

    fn free_segment(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if let Some(data) = slot.data.take() {
            self.held_bytes -= data.len() as u64;
            self.free_slots.push(index);
        }
        if self.active == Some(index) {
            self.active = None;
        }
    }

    /// Appends one record made of `parts` and returns where it starts.
    fn write_record(&mut self, parts: &[&[u8]]) -> Loc {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let index = if len > self.segment_bytes {
            // A large item gets a segment of exactly its size, never active.
            self.new_segment(len)
        } else {
            match self.active_with_room(len) {
                Some(index) => index,
                None => {
                    let index = self.new_segment(self.segment_bytes);
                    self.active = Some(index);
                    index
                }
            }
        };
        let slot = &mut self.slots[index];
        let segment = Arc::get_mut(slot.data.as_mut().expect("a segment in use"))
            .expect("only a segment no one else holds is written");
        let offset = segment.len();
        for part in parts {
            segment.extend_from_slice(part);
        }
        slot.live += len as u64;
        self.held_bytes += len as u64;
        self.live_bytes += len as u64;
        Loc::new(index, offset)
    }

    /// The active segment if `len` more bytes fit and no one else holds it.
    fn active_with_room(&mut self, len: usize) -> Option<usize> {
        let index = self.active?;
        let slot = &mut self.slots[index];
        let free = slot
            .data
            .as_mut()
            .and_then(Arc::get_mut)
            .map(|s| s.capacity() - s.len());
        match free {
            Some(free) if free >= len => Some(index),
            _ => {
                // Full, or shared with a keystore writer: it stays as it is.
                self.active = None;
                if self.slots[index].live == 0 {
                    self.free_segment(index);
                }
                None
            }
        }
    }

    fn new_segment(&mut self, capacity: usize) -> usize {
        let data = Some(Arc::new(Vec::with_capacity(capacity)));
        match self.free_slots.pop() {
            Some(index) => {
                self.slots[index] = Slot { data, live: 0 };
                index
            }
            None => {
                self.slots.push(Slot { data, live: 0 });
                self.slots.len() - 1
            }
        }
    }

    /// Moves the live records of the emptiest segment into the active one
    /// and frees it, once dead bytes outweigh live ones.
    fn maybe_compact(&mut self) {
        let dead = self.held_bytes - self.live_bytes;
        if dead < self.compact_dead_bytes_min || dead <= self.live_bytes {
            return;
        }
        let active = self.active;
        let Some((index, _)) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, s)| s.data.is_some() && Some(*i) != active)
            .min_by_key(|(_, s)| s.live)
        else {
            return;
        };
        // A handle of our own, so the records can be read while the table
        // and the active segment change.
        let segment = Arc::clone(self.slots[index].data.as_ref().expect("filtered"));
        let mut offset = 0;
        while offset < segment.len() {
            let item = ItemRef::at(&segment, offset);
            let here = Loc::new(index, offset);
            offset += item.len();
            let key = item.key();
            let hash = self.hasher.hash_one(key);
            let slots = &self.slots;
            let live = self
                .table
                .find(hash, |l| item_at(slots, *l).key() == key)
                .is_some_and(|l| *l == here);
            if !live {
                continue;
            }
            let moved = self.write_record(&[item.record]);
            if let Some(l) = self.table.find_mut(hash, |l| *l == here) {
                *l = moved;
            }
            // The moved bytes are live twice until the old segment goes.
            self.live_bytes -= item.len() as u64;
            self.slots[index].live -= item.len() as u64;
        }
        self.free_segment(index);
    }
}

/// A consistent view of the items at one moment, independent of the store.
pub struct Frozen {
    segments: Vec<Option<Arc<Vec<u8>>>>,
    locs: Vec<Loc>,
}

impl Frozen {
    pub fn len(&self) -> usize {
        self.locs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locs.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = ItemRef<'_>> {
        self.locs.iter().map(move |loc| {
            let segment = self.segments[loc.segment()]
                .as_ref()
                .expect("a frozen location's segment is held");
            ItemRef::at(segment, loc.offset())
        })
    }
}

fn item_at(slots: &[Slot], loc: Loc) -> ItemRef<'_> {
    let segment = slots[loc.segment()]
        .data
        .as_ref()
        .expect("the table points only into held segments");
    ItemRef::at(segment, loc.offset())
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    fn meta(cas: u64) -> Meta {
        Meta {
            flags: cas as u32 ^ 0xdead_beef,
            // Every fourth item never expires.
            exptime: if cas.is_multiple_of(4) {
                NEVER
            } else {
                cas * 3
            },
            updated_s: cas * 7,
            cas,
            lease: (cas % 4) as u8,
        }
    }

    /// key -> (value, fields): what the store should hold.
    type Model = BTreeMap<Vec<u8>, (Vec<u8>, Meta)>;

    fn check_against(items: &Items, model: &Model) {
        assert_eq!(items.len(), model.len());
        for (key, (value, m)) in model {
            let item = items.get(key).expect("modelled key present");
            assert_eq!(item.key(), &key[..]);
            assert_eq!(item.data(), &value[..]);
            assert_eq!(item.meta(), *m);
        }
        let kv: u64 = model
            .iter()
            .map(|(k, (v, _))| (k.len() + v.len()) as u64)
            .sum();
        assert_eq!(items.kv_bytes(), kv);
        let expiring = model.values().filter(|(_, m)| m.exptime != NEVER).count();
        assert_eq!(items.expiring(), expiring as u64);
        let listed: BTreeMap<Vec<u8>, Vec<u8>> = items
            .iter()
            .map(|i| (i.key().to_vec(), i.data().to_vec()))
            .collect();
        assert_eq!(listed.len(), model.len());
        // Memory stays bounded: dead bytes never exceed live ones by more
        // than the compaction threshold plus one segment in flight.
        let dead = items.held_bytes() - items.live_bytes;
        assert!(
            dead <= items.live_bytes.max(items.compact_dead_bytes_min)
                + 2 * items.segment_bytes as u64,
            "dead {dead} live {}",
            items.live_bytes
        );
    }

    #[derive(Clone, Debug)]
    enum Step {
        Insert(u8, usize),
        Remove(u8),
        Touch(u8, u64),
        Freeze,
        Thaw,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (any::<u8>(), 0usize..3000).prop_map(|(k, n)| Step::Insert(k, n)),
            3 => any::<u8>().prop_map(Step::Remove),
            1 => (any::<u8>(), prop_oneof![Just(NEVER), any::<u64>()]).prop_map(|(k, e)| Step::Touch(k, e)),
            1 => Just(Step::Freeze),
            1 => Just(Step::Thaw),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against a plain map, through overwrites, removals, touches,
        /// compaction and frozen views that must not change underneath.
        #[test]
        fn behaves_like_a_map_and_frozen_views_hold(steps in proptest::collection::vec(step(), 1..2000)) {
            let mut items = Items::with_sizes(8 * 1024, 16 * 1024);
            let mut model = Model::new();
            let mut frozen: Vec<(Frozen, Model)> = Vec::new();
            for (n, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Insert(k, len) => {
                        let key = format!("key-{k}").into_bytes();
                        let value = vec![(n % 251) as u8; len];
                        let m = meta(n as u64);
                        items.insert(&key, &[&value[..len / 2], &value[len / 2..]], m);
                        model.insert(key, (value, m));
                    }
                    Step::Remove(k) => {
                        let key = format!("key-{k}").into_bytes();
                        prop_assert_eq!(items.remove(&key), model.remove(&key).is_some());
                    }
                    Step::Touch(k, e) => {
                        let key = format!("key-{k}").into_bytes();
                        let found = items.set_exptime(&key, e);
                        prop_assert_eq!(found, model.contains_key(&key));
                        if let Some((_, m)) = model.get_mut(&key) {
                            m.exptime = e;
                        }
                    }
                    Step::Freeze => frozen.push((items.freeze(), model.clone())),
                    Step::Thaw => { frozen.pop(); }
                }
            }
            check_against(&items, &model);
            for (view, then) in &frozen {
                let seen: Model = view
                    .iter()
                    .map(|i| (i.key().to_vec(), (i.data().to_vec(), i.meta())))
                    .collect();
                prop_assert_eq!(&seen, then);
            }
        }
    }

    #[test]
    fn large_items_get_their_own_segment_and_are_freed_with_them() {
        let mut items = Items::new();
        let big = vec![7u8; 3 * SEGMENT_BYTES];
        items.insert(b"big", &[&big], meta(1));
        items.insert(b"small", &[b"v"], meta(2));
        assert_eq!(items.get(b"big").unwrap().data(), &big[..]);
        assert!(items.held_bytes() >= big.len() as u64);
        assert!(items.remove(b"big"));
        assert!(items.held_bytes() < SEGMENT_BYTES as u64);
        assert_eq!(items.get(b"small").unwrap().data(), b"v");
    }

    #[test]
    fn overwriting_one_key_forever_keeps_memory_bounded() {
        let mut items = Items::new();
        let value = vec![1u8; 1000];
        for n in 0..50_000u64 {
            items.insert(b"hot", &[&value], meta(n));
        }
        assert_eq!(items.len(), 1);
        assert!(
            items.held_bytes() <= COMPACT_DEAD_BYTES_MIN + 2 * SEGMENT_BYTES as u64,
            "held {}",
            items.held_bytes()
        );
    }

    #[test]
    fn a_million_small_items_cost_little_more_than_their_bytes() {
        let mut items = Items::new();
        let value = [b'x'; 100];
        for n in 0..100_000u32 {
            let key = format!("{n:032}");
            items.insert(key.as_bytes(), &[&value], meta(u64::from(n)));
        }
        let per_item = items.held_bytes() / items.len() as u64;
        assert_eq!(per_item, (RECORD_HEADER_BYTES + 32 + 100) as u64);
    }
}
