//! The key-value state machine: `apply(index, command) -> Outcome`, and the
//! reads the server answers from it.
//!
//! Deterministic by construction: every time it looks at comes from the
//! command (the leader's clock when it accepted it) or from the reader, never
//! from the system clock; the CAS unique of an item is the log index of the
//! entry that last wrote it (or the unique the entry names, meta's `E`:
//! [`Command::unique`]). Replicas that apply the same entries hold the
//! same items. Counters that memcached reports (hits, misses, ...) are the
//! caller's business: they follow from the [`Outcome`]s.
//!
//! Time never runs backwards here: the state keeps the latest time it has
//! applied ([`State::clock_s`]) and every apply and lookup sees at least
//! that. A new leader whose clock is behind the old one's therefore cannot
//! bring an expired item back, which is what makes removing it safe: an item
//! invisible at the state's clock stays invisible, so a [`Op::Reclaim`]
//! entry, a keystore file or a restore may drop it and change no reply.

use bytes::Bytes;

use crate::command::{Command, Initial, Op, StoreMode};
use crate::exptime::{self, AbsTime};
pub use crate::items::{Frozen, ItemRef};
use crate::items::{Items, Meta, RECORD_HEADER_BYTES};

/// One stored value and its metadata, owned: what a keystore file yields
/// and [`State::restore`] takes. Inside the state items live packed (see
/// [`crate::items`]) and are read through [`ItemRef`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub data: Bytes,
    pub flags: u32,
    /// Absolute expiry in Unix seconds, [`exptime::NEVER`] for none.
    pub exptime: AbsTime,
    /// Log index of the entry that last wrote the item (touch keeps it).
    pub cas: u64,
    /// Leader time of the entry that last wrote the item; a delayed flush
    /// hides items written before its deadline's second.
    pub updated_s: u64,
    /// The meta protocol's lease bits ([`lease`]).
    pub lease: u8,
}

/// An item's lease bits: the meta protocol's stale-while-revalidate state,
/// replicated like the rest of the item, so that one client wins a
/// recache across the whole group and a failover does not hand out a
/// second win.
pub mod lease {
    /// A client was told it won the right to recache (`W`); later ones are
    /// told so (`Z`) until the item is written or invalidated again.
    pub const WON: u8 = 1;
    /// Invalidated (`md ... I`): served, marked `X`, until rewritten.
    pub const STALE: u8 = 2;
}

impl Item {
    fn meta(&self) -> Meta {
        Meta {
            flags: self.flags,
            exptime: self.exptime,
            updated_s: self.updated_s,
            cas: self.cas,
            lease: self.lease,
        }
    }
}

impl ItemRef<'_> {
    /// The item as an owned value (the key is [`ItemRef::key`]).
    pub fn to_item(&self) -> Item {
        Item {
            data: Bytes::copy_from_slice(self.data()),
            flags: self.flags(),
            exptime: self.exptime(),
            cas: self.cas(),
            updated_s: self.updated_s(),
            lease: self.lease(),
        }
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup<'a> {
    Hit(ItemRef<'a>),
    Miss,
    /// There is an item but its expiry has passed.
    Expired,
    /// There is an item but a flush_all hides it.
    Flushed,
}

/// One item returned by gat/gats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub key: Bytes,
    pub flags: u32,
    pub data: Bytes,
    pub cas: u64,
    /// When the item was last written (Unix seconds).
    pub updated_s: u64,
}

/// What a meta get that went through the log saw (`W`, `Z`, `X` in its
/// reply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leased {
    pub hit: Hit,
    pub exptime: AbsTime,
    /// This reader won the recache.
    pub won: bool,
    /// An earlier reader had won it.
    pub token_sent: bool,
    pub stale: bool,
}

/// The reply-relevant result of applying one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The item now has unique `cas` (the entry's log index, or the
    /// client's).
    Stored {
        cas: u64,
    },
    NotStored,
    /// cas: the item exists with another unique.
    Exists,
    NotFound,
    Deleted,
    Touched,
    /// The new value after incr/decr, the item's new unique and its
    /// expiry (which the meta protocol's `t` returns).
    Number {
        value: u64,
        cas: u64,
        exptime: AbsTime,
    },
    /// incr/decr on a value that is not a decimal u64.
    NonNumeric,
    /// gat/gats: the hits in request order (misses left out).
    Hits(Vec<Hit>),
    /// A meta get that went through the log (`Op::MetaGet`): the item, if
    /// any, and its lease as this reader saw it.
    Leased(Option<Leased>),
    /// flush_all and no-ops.
    Ok,
    /// reclaim: how many of its keys were still held and invisible.
    Reclaimed(u64),
}

/// The key-value state at some applied log index.
#[derive(Debug)]
pub struct State {
    items: Items,
    /// Pending delayed flush: items written before it vanish once the
    /// clock reaches it. Only one is pending at a time, as in memcached.
    flush_deadline_s: Option<u64>,
    applied_index: u64,
    item_bytes_max: usize,
    /// The replica group's membership as of `applied_index` (the last
    /// configuration entry applied): voters, learners.
    config: Members,
    /// The latest command time applied, in Unix seconds: every apply and
    /// lookup sees at least this time (see the module doc).
    clock_s: u64,
    /// Items removed by [`Op::Reclaim`] since this state was built: a
    /// counter for `stats`, not part of what replicas must agree on.
    reclaimed: u64,
}

/// Largest up-front reservation a restore makes from an item count it has
/// not verified yet (a keystore file's CRC is checked at its end): 4M keys,
/// a 75 MB table. Larger states grow the table as they load.
pub const RESERVE_ITEMS_MAX: usize = 4 << 20;

/// Table bytes an item is counted for against the memory limit: an 8-byte
/// location and a control byte per bucket, at most 7/8 of buckets in use,
/// rounded up.
pub const TABLE_BYTES_PER_ITEM: u64 = 16;

/// What an item of these lengths counts against the memory limit: its
/// record (header, key, value) and its share of the table.
pub fn item_cost_bytes(key_len: usize, value_len: usize) -> u64 {
    (RECORD_HEADER_BYTES + key_len + value_len) as u64 + TABLE_BYTES_PER_ITEM
}

/// Server ids of a configuration: voters, then learners.
pub type Members = (Vec<u64>, Vec<u64>);

impl State {
    /// An empty state whose append/prepend refuse results over `item_bytes_max`.
    pub fn new(item_bytes_max: usize) -> State {
        State {
            items: Items::new(),
            flush_deadline_s: None,
            applied_index: 0,
            item_bytes_max,
            config: Members::default(),
            clock_s: 0,
            reclaimed: 0,
        }
    }

    /// Rebuilds a state from a keystore file's contents, as of `clock_s`
    /// (the caller leaves out what is invisible at it, [`visible`]).
    pub fn restore(
        item_bytes_max: usize,
        applied_index: u64,
        flush_deadline_s: Option<u64>,
        clock_s: u64,
        items: impl IntoIterator<Item = (Bytes, Item)>,
    ) -> State {
        let mut state = State::new(item_bytes_max);
        state.applied_index = applied_index;
        state.flush_deadline_s = flush_deadline_s;
        state.clock_s = clock_s;
        let items = items.into_iter();
        // The upper bound: a keystore reader filters what it yields.
        let (low, high) = items.size_hint();
        state.reserve(high.unwrap_or(low).min(RESERVE_ITEMS_MAX));
        for (key, item) in items {
            state.items.insert(&key, &[&item.data], item.meta());
        }
        state
    }

    /// Makes room for `additional` more keys (a log replay about to apply
    /// that many entries), so the table does not grow on the way.
    pub fn reserve(&mut self, additional: usize) {
        self.items.reserve(additional);
    }

    /// Gives back what a `reserve` did not need (a replay of few keys).
    pub fn shrink_to_fit(&mut self) {
        self.items.shrink_to_fit();
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Membership as of the applied index (empty before any configuration).
    pub fn config(&self) -> &Members {
        &self.config
    }

    /// Sets the membership a keystore file recorded.
    pub fn set_config(&mut self, config: Members) {
        self.config = config;
    }

    pub fn flush_deadline_s(&self) -> Option<u64> {
        self.flush_deadline_s
    }

    /// The latest command time applied (Unix seconds).
    pub fn clock_s(&self) -> u64 {
        self.clock_s
    }

    /// Items reclaimed since this state was built.
    pub fn reclaimed(&self) -> u64 {
        self.reclaimed
    }

    /// Items held, including expired ones not yet reclaimed (as memcached's
    /// curr_items).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether anything held can become invisible as time passes: an item
    /// with an expiry, or a pending flush. While not, there is nothing for
    /// a reclaimer to look for.
    pub fn may_expire(&self) -> bool {
        self.items.expiring() > 0 || self.flush_deadline_s.is_some()
    }

    /// What the items held count against the memory limit (`-m`): every
    /// record's bytes and the table's. Dead records waiting for compaction
    /// are not counted; they stay below the live bytes (see [`crate::items`]).
    pub fn memory_bytes(&self) -> u64 {
        self.items.live_bytes() + self.items.len() as u64 * TABLE_BYTES_PER_ITEM
    }

    /// How much applying `op` now could add to [`State::memory_bytes`], at
    /// most: what a leader checks against the memory limit before it
    /// proposes the write. 0 for what frees memory or replaces in place
    /// (a delete, a touch, a set no larger than the value it replaces), so
    /// those keep working at the limit. A counter grows by 20 bytes at most
    /// and is not counted.
    pub fn growth_bytes(&self, op: &Op) -> u64 {
        let Op::Store {
            mode, key, data, ..
        } = op
        else {
            return 0;
        };
        let held = self.items.get(key);
        match mode {
            StoreMode::Append | StoreMode::Prepend => held.map_or(0, |_| data.len() as u64),
            StoreMode::AppendOrCreate | StoreMode::PrependOrCreate => held
                .map_or(item_cost_bytes(key.len(), data.len()), |_| {
                    data.len() as u64
                }),
            StoreMode::Set
            | StoreMode::Add
            | StoreMode::Replace
            | StoreMode::Cas
            | StoreMode::CasOrStale => {
                let old = held.map_or(0, |item| {
                    item_cost_bytes(item.key().len(), item.data().len())
                });
                item_cost_bytes(key.len(), data.len()).saturating_sub(old)
            }
        }
    }

    /// Key and value bytes held.
    pub fn bytes(&self) -> u64 {
        self.items.kv_bytes()
    }

    pub fn item_bytes_max(&self) -> usize {
        self.item_bytes_max
    }

    /// Every item held, visible or not.
    pub fn items(&self) -> impl ExactSizeIterator<Item = ItemRef<'_>> {
        self.items.iter()
    }

    /// Every item held, visible or not, as of now, for writing a keystore
    /// file off the lock: no item is copied (see [`crate::items`]).
    pub fn freeze(&self) -> Frozen {
        self.items.freeze()
    }

    /// Looks `key` up as a reader at `now_s` sees it (or at the state's
    /// clock, if that is later).
    pub fn lookup(&self, key: &[u8], now_s: u64) -> Lookup<'_> {
        let now_s = now_s.max(self.clock_s);
        match self.items.get(key) {
            None => Lookup::Miss,
            Some(item) if self.is_flushed(item, now_s) => Lookup::Flushed,
            Some(item) if exptime::is_expired(item.exptime(), now_s) => Lookup::Expired,
            Some(item) => Lookup::Hit(item),
        }
    }

    /// Whether a reader at the state's clock can see `item`; what cannot be
    /// seen now never can be again (see the module doc).
    pub fn is_visible(&self, item: &ItemRef<'_>) -> bool {
        visible(
            self.flush_deadline_s,
            self.clock_s,
            item.exptime(),
            item.updated_s(),
        )
    }

    /// The item visible at `now_s`, if any.
    pub fn get(&self, key: &[u8], now_s: u64) -> Option<ItemRef<'_>> {
        match self.lookup(key, now_s) {
            Lookup::Hit(item) => Some(item),
            _ => None,
        }
    }

    /// Visits the items in up to `buckets_max` buckets of the table from
    /// `cursor` on, as [`Items::scan`]; returns the cursor to go on from,
    /// 0 once the walk wrapped around. For listing every item a bounded
    /// step at a time (`lru_crawler metadump`).
    pub fn scan(
        &self,
        cursor: usize,
        buckets_max: usize,
        visit: impl FnMut(ItemRef<'_>) -> bool,
    ) -> usize {
        self.items.scan(cursor, buckets_max, visit)
    }

    /// Keys of items no reader can see at `now_s` (or the state's clock),
    /// for a [`Op::Reclaim`] entry: walks at most `buckets_max` table
    /// buckets from `cursor` and collects at most `keys_max` keys. Returns
    /// them and the cursor to go on from (0 once the walk wrapped around).
    /// Any replica's choice is as good as another's: the keys travel in the
    /// entry, so every replica removes the same items.
    pub fn reclaimable(
        &self,
        cursor: usize,
        now_s: u64,
        buckets_max: usize,
        keys_max: usize,
    ) -> (Vec<Bytes>, usize) {
        let now_s = now_s.max(self.clock_s);
        let mut keys = Vec::new();
        let next = self.items.scan(cursor, buckets_max, |item| {
            if keys.len() >= keys_max {
                return false;
            }
            if !visible(
                self.flush_deadline_s,
                now_s,
                item.exptime(),
                item.updated_s(),
            ) {
                keys.push(Bytes::copy_from_slice(item.key()));
            }
            true
        });
        (keys, next)
    }

    /// Applies the entry at `index`. Indexes must increase by one from the
    /// last applied; the caller (log replay, commit) guarantees it.
    pub fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        debug_assert!(
            index > self.applied_index,
            "apply index {index} after {}",
            self.applied_index
        );
        self.applied_index = index;
        let now_s = command.time_s.max(self.clock_s);
        self.clock_s = now_s;
        // The unique what this entry writes gets: the client's (meta `E`),
        // else the entry's index, the same on every replica either way.
        let unique = command.unique.unwrap_or(index);
        match &command.op {
            Op::Noop => Outcome::Ok,
            Op::Reclaim { keys } => {
                let mut removed = 0;
                for key in keys {
                    if matches!(self.lookup(key, now_s), Lookup::Expired | Lookup::Flushed) {
                        self.items.remove(key);
                        removed += 1;
                    }
                }
                self.reclaimed += removed;
                Outcome::Reclaimed(removed)
            }
            Op::Config { voters, learners } => {
                self.config = (voters.clone(), learners.clone());
                Outcome::Ok
            }
            Op::Store {
                mode,
                key,
                flags,
                exptime,
                data,
                cas_unique,
            } => self.store(
                unique,
                now_s,
                *mode,
                key,
                *flags,
                *exptime,
                data,
                *cas_unique,
            ),
            Op::Delete { key, cas_unique } => match self.get(key, now_s) {
                None => Outcome::NotFound,
                Some(item) if *cas_unique != 0 && item.cas() != *cas_unique => Outcome::Exists,
                Some(_) => {
                    self.items.remove(key);
                    Outcome::Deleted
                }
            },
            Op::Arith {
                key,
                delta,
                incr,
                cas_unique,
                initial,
                touch,
            } => {
                let outcome = self.arith(unique, now_s, key, *delta, *incr, *cas_unique, *initial);
                match (outcome, touch) {
                    // The counter then expires as `touch` says (after a
                    // creation's own expiry, as memcached when T follows N).
                    (Outcome::Number { value, cas, .. }, Some(exptime)) => {
                        self.items.set_exptime(key, *exptime);
                        Outcome::Number {
                            value,
                            cas,
                            exptime: *exptime,
                        }
                    }
                    (outcome, _) => outcome,
                }
            }
            Op::MetaGet {
                key,
                vivify,
                recache_before,
                touch,
            } => self.meta_get(unique, now_s, key, *vivify, *recache_before, *touch),
            Op::Invalidate {
                key,
                cas_unique,
                exptime,
            } => match self.get(key, now_s) {
                None => Outcome::NotFound,
                Some(item) if *cas_unique != 0 && item.cas() != *cas_unique => Outcome::Exists,
                Some(item) => {
                    // As memcached: a new unique, stale, and no win given.
                    let mut meta = item.meta();
                    meta.cas = unique;
                    meta.lease = lease::STALE;
                    if let Some(exptime) = exptime {
                        meta.exptime = *exptime;
                    }
                    let data = item.data().to_vec();
                    self.items.insert(key, &[&data], meta);
                    Outcome::Deleted
                }
            },
            Op::EmptyValue {
                key,
                cas_unique,
                flags,
                exptime,
                stale,
            } => match self.get(key, now_s) {
                None => Outcome::NotFound,
                Some(item) if *cas_unique != 0 && item.cas() != *cas_unique => Outcome::Exists,
                Some(item) => {
                    // memcached stores a new, empty item in its place, which
                    // keeps the old unique unless the client names one; `I`
                    // then invalidates it (a new unique, stale, no win).
                    let meta = Meta {
                        flags: *flags,
                        exptime: *exptime,
                        cas: if *stale {
                            unique
                        } else {
                            command.unique.unwrap_or(item.cas())
                        },
                        updated_s: now_s,
                        lease: if *stale { lease::STALE } else { 0 },
                    };
                    self.items.insert(key, &[], meta);
                    Outcome::Deleted
                }
            },
            Op::Touch { key, exptime } => {
                if self.get(key, now_s).is_some() {
                    self.items.set_exptime(key, *exptime);
                    Outcome::Touched
                } else {
                    Outcome::NotFound
                }
            }
            Op::GetAndTouch { keys, exptime } => {
                let mut hits = Vec::with_capacity(keys.len());
                for key in keys {
                    let Some(item) = self.get(key, now_s) else {
                        continue;
                    };
                    hits.push(Hit {
                        key: key.clone(),
                        flags: item.flags(),
                        data: Bytes::copy_from_slice(item.data()),
                        cas: item.cas(),
                        updated_s: item.updated_s(),
                    });
                    self.items.set_exptime(key, *exptime);
                }
                Outcome::Hits(hits)
            }
            Op::FlushAll { deadline_s } => {
                // A deadline already reached must take effect before a new
                // flush replaces it, or its victims would reappear.
                if let Some(old) = self.flush_deadline_s.take() {
                    if now_s >= old {
                        self.remove_where(|item| item.updated_s() < old);
                    }
                }
                if *deadline_s == 0 || *deadline_s <= now_s {
                    self.items.clear();
                } else {
                    self.flush_deadline_s = Some(*deadline_s);
                }
                Outcome::Ok
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        unique: u64,
        now_s: u64,
        mode: StoreMode,
        key: &Bytes,
        flags: u32,
        exptime: AbsTime,
        data: &Bytes,
        cas_unique: u64,
    ) -> Outcome {
        let existing = self.get(key, now_s);
        let meta = |flags: u32, exptime: AbsTime| Meta {
            flags,
            exptime,
            cas: unique,
            updated_s: now_s,
            lease: 0,
        };
        match (mode, existing) {
            (StoreMode::Set, _) | (StoreMode::Add, None) | (StoreMode::Replace, Some(_)) => {
                self.items.insert(key, &[data], meta(flags, exptime));
            }
            (StoreMode::Add, Some(_)) | (StoreMode::Replace, None) => return Outcome::NotStored,
            (StoreMode::Append | StoreMode::Prepend, None) => return Outcome::NotStored,
            (StoreMode::AppendOrCreate | StoreMode::PrependOrCreate, None) => {
                self.items.insert(key, &[data], meta(flags, exptime));
            }
            // The binary protocol's append and prepend may name a unique.
            (
                StoreMode::Append
                | StoreMode::Prepend
                | StoreMode::AppendOrCreate
                | StoreMode::PrependOrCreate,
                Some(old),
            ) if cas_unique != 0 && old.cas() != cas_unique => return Outcome::Exists,
            (
                StoreMode::Append
                | StoreMode::Prepend
                | StoreMode::AppendOrCreate
                | StoreMode::PrependOrCreate,
                Some(old),
            ) => {
                if old.data().len() + data.len() > self.item_bytes_max {
                    // memcached cannot allocate the joined item and answers
                    // NOT_STORED (the differential test pins this).
                    return Outcome::NotStored;
                }
                // The old value is read out of the segment the new record
                // may be written to, so it is copied first.
                let old_data = old.data().to_vec();
                // append/prepend keep the item's flags and expiry.
                let meta = meta(old.flags(), old.exptime());
                let parts: [&[u8]; 2] =
                    if matches!(mode, StoreMode::Append | StoreMode::AppendOrCreate) {
                        [&old_data, data]
                    } else {
                        [data, &old_data]
                    };
                self.items.insert(key, &parts, meta);
            }
            (StoreMode::Cas | StoreMode::CasOrStale, None) => return Outcome::NotFound,
            // memcached's set-to-invalid: a writer holding an older unique
            // still stores, but its value is served stale, expiring as the
            // item did, and a recache already won stays won. Unique 0 is
            // none, older than nothing (memcached answers EX to it).
            (StoreMode::CasOrStale, Some(old)) if cas_unique != 0 && cas_unique < old.cas() => {
                let meta = Meta {
                    lease: lease::STALE | (old.lease() & lease::WON),
                    ..meta(flags, old.exptime())
                };
                self.items.insert(key, &[data], meta);
            }
            (StoreMode::Cas | StoreMode::CasOrStale, Some(old)) if old.cas() != cas_unique => {
                return Outcome::Exists
            }
            (StoreMode::Cas | StoreMode::CasOrStale, Some(_)) => {
                self.items.insert(key, &[data], meta(flags, exptime));
            }
        }
        Outcome::Stored { cas: unique }
    }

    #[allow(clippy::too_many_arguments)]
    fn arith(
        &mut self,
        unique: u64,
        now_s: u64,
        key: &Bytes,
        delta: u64,
        incr: bool,
        cas_unique: u64,
        initial: Option<Initial>,
    ) -> Outcome {
        let meta = |flags: u32, exptime: AbsTime| Meta {
            flags,
            exptime,
            cas: unique,
            updated_s: now_s,
            lease: 0,
        };
        let mut digits = [0u8; crate::protocol::DECIMAL_BYTES_MAX];
        let Some(old) = self.get(key, now_s) else {
            let Some(Initial { value, exptime }) = initial else {
                return Outcome::NotFound;
            };
            // As memcached's binary increment: the initial value, stored
            // as its decimal text with flags 0; the delta is not applied.
            let text = crate::protocol::decimal(&mut digits, value);
            self.items.insert(key, &[text], meta(0, exptime));
            return Outcome::Number {
                value,
                cas: unique,
                exptime,
            };
        };
        // memcached's order: an empty value, then the unique, then the
        // number.
        if old.data().is_empty() {
            return Outcome::NonNumeric;
        }
        if cas_unique != 0 && old.cas() != cas_unique {
            return Outcome::Exists;
        }
        let Some(value) = crate::c_number::safe_strtoull(old.data()) else {
            return Outcome::NonNumeric;
        };
        let (flags, exptime, old_len) = (old.flags(), old.exptime(), old.data().len());
        let value = if incr {
            value.wrapping_add(delta)
        } else {
            value.saturating_sub(delta)
        };
        let text = crate::protocol::decimal(&mut digits, value);
        // As memcached: a number no longer than the value it replaces is
        // written over it, padded with spaces to its length (clients that
        // read counters trim; their test suites expect the padding).
        // (An old value may be long: strtoull stops at the first space.)
        let padding = old_len.saturating_sub(text.len());
        let spaces = [b' '; crate::protocol::DECIMAL_BYTES_MAX];
        let long_padding;
        let pad: &[u8] = if padding <= spaces.len() {
            &spaces[..padding]
        } else {
            long_padding = vec![b' '; padding];
            &long_padding
        };
        let parts: [&[u8]; 2] = [text, pad];
        // A new value: the lease bits go, as with any write.
        self.items.insert(key, &parts, meta(flags, exptime));
        Outcome::Number {
            value,
            cas: unique,
            exptime,
        }
    }

    /// [`Op::MetaGet`]: the item (created empty if missing and `vivify`
    /// says so, its expiry set if `touch` says so) and whether this reader
    /// wins the recache: it created the item, or no reader won yet and the
    /// item is stale or expires before `recache_before` (memcached's rules).
    fn meta_get(
        &mut self,
        unique: u64,
        now_s: u64,
        key: &Bytes,
        vivify: Option<AbsTime>,
        recache_before: Option<AbsTime>,
        touch: Option<AbsTime>,
    ) -> Outcome {
        let mut created = false;
        if self.get(key, now_s).is_none() {
            let Some(exptime) = vivify else {
                return Outcome::Leased(None);
            };
            let meta = Meta {
                flags: 0,
                exptime,
                cas: unique,
                updated_s: now_s,
                lease: lease::WON,
            };
            self.items.insert(key, &[], meta);
            created = true;
        }
        if let Some(exptime) = touch {
            self.items.set_exptime(key, exptime);
        }
        let Some(item) = self.get(key, now_s) else {
            // Created already expired.
            return Outcome::Leased(None);
        };
        let before = item.lease();
        let token_sent = !created && before & lease::WON != 0;
        let stale = before & lease::STALE != 0;
        let expires_soon = recache_before
            .is_some_and(|before| item.exptime() != exptime::NEVER && item.exptime() < before);
        let won = created || (!token_sent && (stale || expires_soon));
        let leased = Leased {
            hit: Hit {
                key: key.clone(),
                flags: item.flags(),
                data: Bytes::copy_from_slice(item.data()),
                cas: item.cas(),
                updated_s: item.updated_s(),
            },
            exptime: item.exptime(),
            won,
            token_sent,
            stale,
        };
        if won && !created {
            self.items.set_lease(key, before | lease::WON);
        }
        Outcome::Leased(Some(leased))
    }

    fn is_flushed(&self, item: ItemRef<'_>, now_s: u64) -> bool {
        flushed(self.flush_deadline_s, now_s, item.updated_s())
    }

    fn remove_where(&mut self, dead: impl Fn(ItemRef<'_>) -> bool) {
        let keys: Vec<Vec<u8>> = self
            .items
            .iter()
            .filter(|item| dead(*item))
            .map(|item| item.key().to_vec())
            .collect();
        for key in &keys {
            self.items.remove(key);
        }
    }
}

/// The items of a frozen view that a reader at `clock_s` can see, for a
/// keystore file, which must announce its item count first: counted in a
/// first pass over the view.
pub fn visible_items(
    frozen: &Frozen,
    flush_deadline_s: Option<u64>,
    clock_s: u64,
) -> VisibleItems<'_> {
    let keep = move |item: &ItemRef<'_>| {
        visible(flush_deadline_s, clock_s, item.exptime(), item.updated_s())
    };
    let remaining = frozen.iter().filter(keep).count();
    VisibleItems {
        inner: Box::new(frozen.iter().filter(keep)),
        remaining,
    }
}

/// See [`visible_items`].
pub struct VisibleItems<'a> {
    inner: Box<dyn Iterator<Item = ItemRef<'a>> + Send + 'a>,
    remaining: usize,
}

impl<'a> Iterator for VisibleItems<'a> {
    type Item = ItemRef<'a>;

    fn next(&mut self) -> Option<ItemRef<'a>> {
        let item = self.inner.next()?;
        self.remaining -= 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for VisibleItems<'_> {}

/// Whether an item with these fields can be seen at `now_s` under a pending
/// flush with `flush_deadline_s`.
pub fn visible(
    flush_deadline_s: Option<u64>,
    now_s: u64,
    exptime: AbsTime,
    updated_s: u64,
) -> bool {
    !flushed(flush_deadline_s, now_s, updated_s) && !exptime::is_expired(exptime, now_s)
}

/// Whether a pending flush with `flush_deadline_s` hides an item last
/// written at `updated_s` from a reader at `now_s`.
/// A delayed flush takes effect when the clock reaches its deadline, the
/// start of that second: what was written in an earlier second is gone,
/// what is written in the deadline's second or later came after it.
fn flushed(flush_deadline_s: Option<u64>, now_s: u64, updated_s: u64) -> bool {
    matches!(flush_deadline_s, Some(deadline) if now_s >= deadline && updated_s < deadline)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const LIMIT: usize = 64;

    fn cmd(time_s: u64, op: Op) -> Command {
        Command {
            time_s,
            op,
            unique: None,
        }
    }

    fn store(mode: StoreMode, key: &str, data: &str, exptime: u64) -> Op {
        Op::Store {
            mode,
            key: Bytes::copy_from_slice(key.as_bytes()),
            flags: 0,
            exptime,
            data: Bytes::copy_from_slice(data.as_bytes()),
            cas_unique: 0,
        }
    }

    fn set(key: &str, data: &str) -> Op {
        store(StoreMode::Set, key, data, exptime::NEVER)
    }

    #[test]
    fn cas_unique_is_the_log_index() {
        let mut state = State::new(LIMIT);
        state.apply(7, &cmd(1, set("k", "v")));
        assert_eq!(state.get(b"k", 1).unwrap().cas(), 7);
    }

    #[test]
    fn counters_wrap_up_and_floor_down() {
        let mut state = State::new(LIMIT);
        state.apply(1, &cmd(1, set("n", "18446744073709551615")));
        let incr = Op::Arith {
            key: Bytes::from_static(b"n"),
            delta: 1,
            incr: true,
            cas_unique: 0,
            initial: None,
            touch: None,
        };
        let zero = |cas| Outcome::Number {
            value: 0,
            cas,
            exptime: exptime::NEVER,
        };
        assert_eq!(state.apply(2, &cmd(1, incr)), zero(2));
        let decr = Op::Arith {
            key: Bytes::from_static(b"n"),
            delta: 5,
            incr: false,
            cas_unique: 0,
            initial: None,
            touch: None,
        };
        assert_eq!(state.apply(3, &cmd(1, decr)), zero(3));
    }

    /// The binary protocol's forms: a unique that must match, and an
    /// initial value for a missing counter.
    #[test]
    fn arith_and_delete_may_name_a_unique_and_create() {
        let mut state = State::new(LIMIT);
        let arith = |cas_unique, initial| Op::Arith {
            key: Bytes::from_static(b"n"),
            delta: 3,
            incr: true,
            cas_unique,
            initial,
            touch: None,
        };
        let initial = Some(Initial {
            value: 10,
            exptime: exptime::NEVER,
        });
        assert_eq!(state.apply(1, &cmd(1, arith(0, None))), Outcome::NotFound);
        let number = |value, cas| Outcome::Number {
            value,
            cas,
            exptime: exptime::NEVER,
        };
        let created = number(10, 2);
        assert_eq!(state.apply(2, &cmd(1, arith(0, initial))), created);
        assert_eq!(state.get(b"n", 1).unwrap().data(), b"10");
        assert_eq!(state.apply(3, &cmd(1, arith(7, initial))), Outcome::Exists);
        let added = number(13, 4);
        assert_eq!(state.apply(4, &cmd(1, arith(2, initial))), added);
        let delete = |cas_unique| Op::Delete {
            key: Bytes::from_static(b"n"),
            cas_unique,
        };
        assert_eq!(state.apply(5, &cmd(1, delete(3))), Outcome::Exists);
        assert_eq!(state.apply(6, &cmd(1, delete(4))), Outcome::Deleted);
        let append = |cas_unique| Op::Store {
            mode: StoreMode::Append,
            key: Bytes::from_static(b"a"),
            flags: 0,
            exptime: exptime::NEVER,
            data: Bytes::from_static(b"x"),
            cas_unique,
        };
        state.apply(7, &cmd(1, set("a", "v")));
        assert_eq!(state.apply(8, &cmd(1, append(6))), Outcome::Exists);
        assert_eq!(
            state.apply(9, &cmd(1, append(7))),
            Outcome::Stored { cas: 9 }
        );
        // ma ... T: the counter then expires so.
        let touched = Op::Arith {
            key: Bytes::from_static(b"n2"),
            delta: 1,
            incr: true,
            cas_unique: 0,
            initial,
            touch: Some(700),
        };
        let expiring = Outcome::Number {
            value: 10,
            cas: 10,
            exptime: 700,
        };
        assert_eq!(state.apply(10, &cmd(1, touched)), expiring);
        assert_eq!(state.get(b"n2", 1).unwrap().exptime(), 700);
    }

    /// Stale-while-revalidate as memcached's mg/md: the reader that creates
    /// a missing item wins (W), later ones see Z; an invalidated item is
    /// stale (X), its next reader wins, and a write clears it all.
    #[test]
    fn recache_is_won_once() {
        let mut state = State::new(LIMIT);
        let mg = |vivify, recache_before| Op::MetaGet {
            key: Bytes::from_static(b"k"),
            vivify,
            recache_before,
            touch: None,
        };
        let seen = |outcome: Outcome| match outcome {
            Outcome::Leased(Some(l)) => (l.won, l.token_sent, l.stale, l.hit.cas),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            state.apply(1, &cmd(1, mg(None, None))),
            Outcome::Leased(None)
        );
        assert_eq!(
            seen(state.apply(2, &cmd(1, mg(Some(exptime::NEVER), None)))),
            (true, false, false, 2)
        );
        assert_eq!(
            seen(state.apply(3, &cmd(1, mg(Some(exptime::NEVER), None)))),
            (false, true, false, 2)
        );
        state.apply(4, &cmd(1, set("k", "v")));
        let invalidate = |cas_unique| Op::Invalidate {
            key: Bytes::from_static(b"k"),
            cas_unique,
            exptime: Some(500),
        };
        assert_eq!(state.apply(5, &cmd(1, invalidate(3))), Outcome::Exists);
        assert_eq!(state.apply(6, &cmd(1, invalidate(4))), Outcome::Deleted);
        assert_eq!(state.get(b"k", 1).unwrap().exptime(), 500);
        assert_eq!(
            seen(state.apply(7, &cmd(1, mg(None, None)))),
            (true, false, true, 6)
        );
        assert_eq!(
            seen(state.apply(8, &cmd(1, mg(None, None)))),
            (false, true, true, 6)
        );
        // R: a reader wins when the item expires before its threshold.
        state.apply(9, &cmd(1, set_until("k", 100)));
        assert_eq!(
            seen(state.apply(10, &cmd(1, mg(None, Some(50))))),
            (false, false, false, 9)
        );
        assert_eq!(
            seen(state.apply(11, &cmd(1, mg(None, Some(150))))),
            (true, false, false, 9)
        );
        assert_eq!(
            seen(state.apply(12, &cmd(1, mg(None, Some(150))))),
            (false, true, false, 9)
        );
        let missing = Op::Invalidate {
            key: Bytes::from_static(b"nope"),
            cas_unique: 0,
            exptime: None,
        };
        assert_eq!(state.apply(13, &cmd(1, missing)), Outcome::NotFound);
    }

    /// memcached writes a number no longer than the old value over it,
    /// padded with spaces; a longer one is written as it is.
    #[test]
    fn a_shorter_counter_is_padded_to_the_old_length() {
        let mut state = State::new(LIMIT);
        let arith = |incr, delta| Op::Arith {
            key: Bytes::from_static(b"n"),
            delta,
            incr,
            cas_unique: 0,
            initial: None,
            touch: None,
        };
        state.apply(1, &cmd(1, set("n", "100")));
        state.apply(2, &cmd(1, arith(false, 91)));
        assert_eq!(state.get(b"n", 1).unwrap().data(), b"9  ");
        state.apply(3, &cmd(1, arith(true, 1)));
        assert_eq!(state.get(b"n", 1).unwrap().data(), b"10 ");
        state.apply(4, &cmd(1, arith(true, 990)));
        assert_eq!(state.get(b"n", 1).unwrap().data(), b"1000");
        let long = format!("7 {}", "x".repeat(40));
        state.apply(5, &cmd(1, set("n", &long)));
        state.apply(6, &cmd(1, arith(true, 1)));
        assert_eq!(
            state.get(b"n", 1).unwrap().data(),
            format!("8{}", " ".repeat(41)).as_bytes()
        );
    }

    /// Meta's `ms ... I C<older>` (memcached's set-to-invalid): the value
    /// is stored, stale, keeping the expiry and a won recache; a newer or
    /// unknown unique is EX as for any cas, a matching one a plain store.
    #[test]
    fn set_to_invalid_stores_stale_under_an_older_unique() {
        let mut state = State::new(LIMIT);
        let set_stale = |cas_unique, exptime| Op::Store {
            mode: StoreMode::CasOrStale,
            key: Bytes::from_static(b"k"),
            flags: 0,
            exptime,
            data: Bytes::from_static(b"new"),
            cas_unique,
        };
        assert_eq!(
            state.apply(1, &cmd(1, set_stale(1, 900))),
            Outcome::NotFound
        );
        state.apply(2, &cmd(1, set_until("k", 500)));
        assert_eq!(state.apply(3, &cmd(1, set_stale(9, 900))), Outcome::Exists);
        // Won first, then written with an older unique: still won, stale.
        let vivify = Op::MetaGet {
            key: Bytes::from_static(b"k"),
            vivify: None,
            recache_before: Some(1000),
            touch: None,
        };
        assert!(matches!(state.apply(4, &cmd(1, vivify)), Outcome::Leased(Some(l)) if l.won));
        assert_eq!(
            state.apply(5, &cmd(1, set_stale(1, 900))),
            Outcome::Stored { cas: 5 }
        );
        let item = state.get(b"k", 1).unwrap();
        assert_eq!(item.data(), b"new");
        assert_eq!(item.exptime(), 500);
        assert_eq!(item.lease(), lease::STALE | lease::WON);
        // The item's own unique: an ordinary cas, which clears the lease.
        assert_eq!(
            state.apply(6, &cmd(1, set_stale(5, 900))),
            Outcome::Stored { cas: 6 }
        );
        let item = state.get(b"k", 1).unwrap();
        assert_eq!((item.exptime(), item.lease()), (900, 0));
    }

    /// Meta's `md ... x`: the value emptied in place with the flags and
    /// expiry given, the unique kept (new under `I`, the client's under `E`).
    #[test]
    fn empty_value_keeps_the_item() {
        let mut state = State::new(LIMIT);
        let empty = |cas_unique, stale| Op::EmptyValue {
            key: Bytes::from_static(b"k"),
            cas_unique,
            flags: 3,
            exptime: 800,
            stale,
        };
        assert_eq!(state.apply(1, &cmd(1, empty(0, false))), Outcome::NotFound);
        state.apply(2, &cmd(1, set("k", "value")));
        assert_eq!(state.apply(3, &cmd(1, empty(7, false))), Outcome::Exists);
        assert_eq!(state.apply(4, &cmd(1, empty(2, false))), Outcome::Deleted);
        let item = state.get(b"k", 1).unwrap();
        assert_eq!(
            (
                item.data(),
                item.flags(),
                item.exptime(),
                item.cas(),
                item.lease()
            ),
            (&b""[..], 3, 800, 2, 0)
        );
        assert_eq!(state.apply(5, &cmd(1, empty(0, true))), Outcome::Deleted);
        let item = state.get(b"k", 1).unwrap();
        assert_eq!((item.cas(), item.lease()), (5, lease::STALE));
        let named = Command {
            unique: Some(42),
            ..cmd(1, empty(0, false))
        };
        state.apply(6, &named);
        assert_eq!(state.get(b"k", 1).unwrap().cas(), 42);
    }

    /// Meta's `E`: what an entry writes takes the client's unique instead
    /// of the entry's index, on every kind of write.
    #[test]
    fn a_client_unique_replaces_the_index() {
        let mut state = State::new(LIMIT);
        let with = |unique, op| Command {
            unique: Some(unique),
            ..cmd(1, op)
        };
        assert_eq!(
            state.apply(1, &with(100, set("k", "5"))),
            Outcome::Stored { cas: 100 }
        );
        assert_eq!(state.get(b"k", 1).unwrap().cas(), 100);
        let incr = Op::Arith {
            key: Bytes::from_static(b"k"),
            delta: 1,
            incr: true,
            cas_unique: 100,
            initial: None,
            touch: None,
        };
        assert_eq!(
            state.apply(2, &with(7, incr)),
            Outcome::Number {
                value: 6,
                cas: 7,
                exptime: exptime::NEVER
            }
        );
        let invalidate = Op::Invalidate {
            key: Bytes::from_static(b"k"),
            cas_unique: 7,
            exptime: None,
        };
        state.apply(3, &with(8, invalidate));
        assert_eq!(state.get(b"k", 1).unwrap().cas(), 8);
        let vivify = Op::MetaGet {
            key: Bytes::from_static(b"new"),
            vivify: Some(exptime::NEVER),
            recache_before: None,
            touch: None,
        };
        state.apply(4, &with(9, vivify));
        assert_eq!(state.get(b"new", 1).unwrap().cas(), 9);
        // A write that fails changes nothing.
        assert_eq!(
            state.apply(5, &with(10, store(StoreMode::Add, "new", "x", 0))),
            Outcome::NotStored
        );
        assert_eq!(state.get(b"new", 1).unwrap().cas(), 9);
    }

    #[test]
    fn delayed_flush_hides_items_written_before_its_deadline() {
        let mut state = State::new(LIMIT);
        state.apply(1, &cmd(100, set("a", "1")));
        state.apply(2, &cmd(100, Op::FlushAll { deadline_s: 102 }));
        state.apply(3, &cmd(101, set("b", "2")));
        assert!(state.get(b"a", 101).is_some());
        assert!(matches!(state.lookup(b"a", 102), Lookup::Flushed));
        assert!(matches!(state.lookup(b"b", 102), Lookup::Flushed));
        // Written in the deadline's second: after the flush took effect.
        state.apply(4, &cmd(102, set("d", "4")));
        assert!(state.get(b"d", 102).is_some());
        state.apply(5, &cmd(103, set("c", "3")));
        assert!(state.get(b"c", 103).is_some());
        // A new flush after the deadline must not bring the victims back.
        state.apply(6, &cmd(104, Op::FlushAll { deadline_s: 500 }));
        assert!(matches!(state.lookup(b"a", 104), Lookup::Miss));
        assert!(state.get(b"c", 104).is_some());
        assert!(state.get(b"d", 104).is_some());
    }

    #[test]
    fn bytes_are_accounted() {
        let mut state = State::new(LIMIT);
        state.apply(1, &cmd(1, set("k", "abc")));
        state.apply(2, &cmd(1, set("k", "de")));
        assert_eq!(state.bytes(), 3);
        state.apply(
            3,
            &cmd(
                1,
                Op::Delete {
                    key: Bytes::from_static(b"k"),
                    cas_unique: 0,
                },
            ),
        );
        assert_eq!(state.bytes(), 0);
    }

    fn set_until(key: &str, exptime: u64) -> Op {
        store(StoreMode::Set, key, "value", exptime)
    }

    fn keys(names: &[&str]) -> Vec<Bytes> {
        names
            .iter()
            .map(|k| Bytes::copy_from_slice(k.as_bytes()))
            .collect()
    }

    #[test]
    fn growth_counts_what_a_write_adds() {
        let mut state = State::new(LIMIT);
        let cost = |value: &str| item_cost_bytes(1, value.len());
        assert_eq!(state.growth_bytes(&set("k", "abcd")), cost("abcd"));
        state.apply(1, &cmd(1, set("k", "abcd")));
        assert_eq!(state.memory_bytes(), cost("abcd"));
        // Replacing with a value no larger adds nothing; a larger one the
        // difference.
        assert_eq!(state.growth_bytes(&set("k", "ab")), 0);
        assert_eq!(state.growth_bytes(&set("k", "abcdef")), 2);
        let append = store(StoreMode::Append, "k", "xyz", exptime::NEVER);
        assert_eq!(state.growth_bytes(&append), 3);
        let absent = store(StoreMode::Append, "q", "xyz", exptime::NEVER);
        assert_eq!(state.growth_bytes(&absent), 0);
        let delete = Op::Delete {
            key: Bytes::from_static(b"k"),
            cas_unique: 0,
        };
        assert_eq!(state.growth_bytes(&delete), 0);
        state.apply(2, &cmd(1, delete));
        assert_eq!(state.memory_bytes(), 0);
    }

    #[test]
    fn reclaim_removes_only_what_no_reader_can_see() {
        let mut state = State::new(LIMIT);
        state.apply(1, &cmd(100, set_until("expired", 150)));
        state.apply(2, &cmd(100, set("flushed", "v")));
        state.apply(3, &cmd(100, Op::FlushAll { deadline_s: 120 }));
        state.apply(4, &cmd(130, set("live", "v")));
        state.apply(5, &cmd(130, set_until("later", 300)));
        assert_eq!(state.len(), 4);
        let before = state.bytes();
        let reclaim = Op::Reclaim {
            keys: keys(&["expired", "flushed", "live", "later", "absent"]),
        };
        assert_eq!(state.apply(6, &cmd(200, reclaim)), Outcome::Reclaimed(2));
        assert_eq!(state.len(), 2);
        assert_eq!(state.reclaimed(), 2);
        // "expired" with "value", "flushed" with "v".
        assert_eq!(state.bytes(), before - (7 + 5) - (7 + 1));
        assert_eq!(state.get(b"live", 200).unwrap().cas(), 4);
        assert_eq!(state.get(b"later", 200).unwrap().cas(), 5);
    }

    /// A leader whose clock is behind its predecessor's cannot bring an
    /// expired item back: reclaiming it on one replica and not yet on
    /// another must change no later outcome.
    #[test]
    fn the_clock_never_runs_backwards() {
        let mut state = State::new(LIMIT);
        state.apply(1, &cmd(100, set_until("k", 150)));
        state.apply(2, &cmd(160, Op::Noop));
        assert_eq!(state.clock_s(), 160);
        let append = store(StoreMode::Append, "k", "x", exptime::NEVER);
        assert_eq!(state.apply(3, &cmd(140, append)), Outcome::NotStored);
        assert_eq!(state.clock_s(), 160);
        assert!(matches!(state.lookup(b"k", 140), Lookup::Expired));
    }

    proptest! {
        /// Walking the whole table a bounded step at a time finds exactly the
        /// items no reader can see, whatever the step sizes.
        #[test]
        fn reclaimable_walk_finds_every_invisible_item(
            exptimes in proptest::collection::vec(prop_oneof![Just(0u64), 1u64..400], 1..300),
            buckets_max in 1usize..64,
            keys_max in 1usize..16,
        ) {
            let mut state = State::new(LIMIT);
            for (i, exptime) in exptimes.iter().enumerate() {
                state.apply(i as u64 + 1, &cmd(100, set_until(&format!("k{i}"), *exptime)));
            }
            let now = 200;
            let want: std::collections::BTreeSet<Bytes> = state
                .items()
                .filter(|item| exptime::is_expired(item.exptime(), now))
                .map(|item| Bytes::copy_from_slice(item.key()))
                .collect();
            let mut found = std::collections::BTreeSet::new();
            let mut cursor = 0;
            // Every step visits at least one bucket, so this many end the walk.
            for _ in 0..=state.len() * 16 {
                let (keys, next) = state.reclaimable(cursor, now, buckets_max, keys_max);
                prop_assert!(keys.len() <= keys_max);
                found.extend(keys);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            prop_assert_eq!(cursor, 0, "the walk ends");
            prop_assert_eq!(&found, &want);
            let index = exptimes.len() as u64 + 1;
            let reclaim = Op::Reclaim { keys: found.into_iter().collect() };
            prop_assert_eq!(state.apply(index, &cmd(now, reclaim)), Outcome::Reclaimed(want.len() as u64));
            prop_assert_eq!(state.len(), exptimes.len() - want.len());
        }
    }

    /// The oracle: a plain map with memcached's rules written out the
    /// simplest way, no expiry (exptimes are NEVER or long past).
    #[derive(Default)]
    struct Model {
        items: BTreeMap<Vec<u8>, (Vec<u8>, u32, u64)>,
    }

    impl Model {
        fn apply(&mut self, index: u64, op: &Op) -> Outcome {
            match op {
                Op::Noop => Outcome::Ok,
                Op::Store {
                    mode,
                    key,
                    flags,
                    exptime,
                    data,
                    cas_unique,
                } => {
                    let expired = *exptime == exptime::EXPIRED;
                    let present = self.items.get(&key[..]).cloned();
                    let new = match (mode, present) {
                        (StoreMode::Set, _)
                        | (StoreMode::Add, None)
                        | (StoreMode::Replace, Some(_)) => (data.to_vec(), *flags),
                        (StoreMode::Cas, None) => return Outcome::NotFound,
                        (StoreMode::Cas, Some(old)) => {
                            if old.2 != *cas_unique {
                                return Outcome::Exists;
                            }
                            (data.to_vec(), *flags)
                        }
                        (StoreMode::Append, Some(old)) | (StoreMode::Prepend, Some(old)) => {
                            if *cas_unique != 0 && old.2 != *cas_unique {
                                return Outcome::Exists;
                            }
                            if old.0.len() + data.len() > LIMIT {
                                return Outcome::NotStored;
                            }
                            let joined = if *mode == StoreMode::Append {
                                [&old.0[..], &data[..]].concat()
                            } else {
                                [&data[..], &old.0[..]].concat()
                            };
                            self.items.insert(key.to_vec(), (joined, old.1, index));
                            return Outcome::Stored { cas: index };
                        }
                        _ => return Outcome::NotStored,
                    };
                    if expired {
                        self.items.remove(&key[..]);
                    } else {
                        self.items.insert(key.to_vec(), (new.0, new.1, index));
                    }
                    Outcome::Stored { cas: index }
                }
                Op::Delete { key, cas_unique } => match self.items.get(&key[..]) {
                    None => Outcome::NotFound,
                    Some(old) if *cas_unique != 0 && old.2 != *cas_unique => Outcome::Exists,
                    Some(_) => {
                        self.items.remove(&key[..]);
                        Outcome::Deleted
                    }
                },
                Op::Arith {
                    key,
                    delta,
                    incr,
                    cas_unique,
                    initial,
                    touch: _,
                } => {
                    let Some(old) = self.items.get(&key[..]).cloned() else {
                        let Some(Initial { value, exptime }) = initial else {
                            return Outcome::NotFound;
                        };
                        if *exptime != exptime::EXPIRED {
                            let text = value.to_string().into_bytes();
                            self.items.insert(key.to_vec(), (text, 0, index));
                        }
                        return Outcome::Number {
                            value: *value,
                            cas: index,
                            exptime: *exptime,
                        };
                    };
                    if old.0.is_empty() {
                        return Outcome::NonNumeric;
                    }
                    if *cas_unique != 0 && old.2 != *cas_unique {
                        return Outcome::Exists;
                    }
                    // strtoull's reading: leading space, digits, then the end
                    // or a space (memcached ignores what follows a space).
                    let text = String::from_utf8_lossy(&old.0).into_owned();
                    let text = text.trim_start();
                    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
                    let rest = &text[digits.len()..];
                    let number = (rest.is_empty()
                        || rest.starts_with(|c: char| c.is_ascii_whitespace()))
                    .then(|| digits.parse::<u64>().ok())
                    .flatten();
                    let Some(n) = number else {
                        return Outcome::NonNumeric;
                    };
                    let n = if *incr {
                        n.wrapping_add(*delta)
                    } else {
                        n.saturating_sub(*delta)
                    };
                    // Padded with spaces to the old length when shorter.
                    let text = format!("{n:<width$}", width = old.0.len()).into_bytes();
                    self.items.insert(key.to_vec(), (text, old.1, index));
                    // The model's items never expire.
                    Outcome::Number {
                        value: n,
                        cas: index,
                        exptime: exptime::NEVER,
                    }
                }
                Op::MetaGet { .. } | Op::Invalidate { .. } | Op::EmptyValue { .. } => {
                    unreachable!("the model's strategy does not make meta ops")
                }
                Op::Touch { key, exptime } => {
                    if !self.items.contains_key(&key[..]) {
                        return Outcome::NotFound;
                    }
                    if *exptime == exptime::EXPIRED {
                        self.items.remove(&key[..]);
                    }
                    Outcome::Touched
                }
                Op::GetAndTouch { .. } | Op::Config { .. } | Op::Reclaim { .. } => {
                    unreachable!("not generated")
                }
                Op::FlushAll { .. } => {
                    self.items.clear();
                    Outcome::Ok
                }
            }
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = prop_oneof![Just("a"), Just("b"), Just("c")]
            .prop_map(|k| Bytes::from_static(k.as_bytes()));
        let data = prop_oneof![
            Just("1"),
            Just("42"),
            Just("18446744073709551615"),
            Just(" 7 "),
            Just("x"),
            Just(""),
            Just("abcdefghijklmnopqrstuvwxyzabcdefghijkl")
        ]
        .prop_map(|d| Bytes::from_static(d.as_bytes()));
        let mode = prop_oneof![
            Just(StoreMode::Set),
            Just(StoreMode::Add),
            Just(StoreMode::Replace),
            Just(StoreMode::Append),
            Just(StoreMode::Prepend),
            Just(StoreMode::Cas)
        ];
        let exptime = prop_oneof![4 => Just(exptime::NEVER), 1 => Just(exptime::EXPIRED)];
        prop_oneof![
            (mode, key.clone(), 0u32..3, exptime.clone(), data, 0u64..12).prop_map(
                |(mode, key, flags, exptime, data, cas_unique)| Op::Store {
                    mode,
                    key,
                    flags,
                    exptime,
                    data,
                    cas_unique
                }
            ),
            (key.clone(), prop_oneof![Just(0u64), 0u64..12])
                .prop_map(|(key, cas_unique)| Op::Delete { key, cas_unique }),
            (
                key.clone(),
                prop_oneof![Just(0u64), Just(1), Just(u64::MAX)],
                any::<bool>(),
                prop_oneof![Just(0u64), 0u64..12],
                proptest::option::of((prop_oneof![Just(0u64), Just(u64::MAX)], exptime.clone()))
            )
                .prop_map(|(key, delta, incr, cas_unique, initial)| Op::Arith {
                    key,
                    delta,
                    incr,
                    cas_unique,
                    initial: initial.map(|(value, exptime)| Initial { value, exptime }),
                    touch: None,
                }),
            (key, exptime).prop_map(|(key, exptime)| Op::Touch { key, exptime }),
            Just(Op::FlushAll { deadline_s: 0 }),
            Just(Op::Noop),
        ]
    }

    proptest! {
        /// Model-based test: the state machine and the plain-map oracle give
        /// the same outcomes and hold the same visible items.
        #[test]
        fn matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
            let now = 1_000;
            let mut state = State::new(LIMIT);
            let mut model = Model::default();
            for (i, op) in ops.iter().enumerate() {
                let index = i as u64 + 1;
                let got = state.apply(index, &cmd(now, op.clone()));
                let want = model.apply(index, op);
                prop_assert_eq!(&got, &want, "op {} {:?}", index, op);
                for key in [&b"a"[..], b"b", b"c"] {
                    let got = state.get(key, now).map(|i| (i.data().to_vec(), i.flags(), i.cas()));
                    let want = model.items.get(key).cloned();
                    prop_assert_eq!(got, want, "key {:?} after op {}", key, index);
                }
            }
        }

        /// Two replicas applying the same entries hold the same items.
        #[test]
        fn deterministic(ops in proptest::collection::vec(op(), 1..40)) {
            let mut one = State::new(LIMIT);
            let mut two = State::new(LIMIT);
            for (i, op) in ops.iter().enumerate() {
                let c = cmd(5, op.clone());
                prop_assert_eq!(one.apply(i as u64 + 1, &c), two.apply(i as u64 + 1, &c));
            }
            let a: BTreeMap<_, _> = one.items().map(|i| (i.key().to_vec(), i.to_item())).collect();
            let b: BTreeMap<_, _> = two.items().map(|i| (i.key().to_vec(), i.to_item())).collect();
            prop_assert_eq!(a, b);
        }
    }
}
