//! The sequential specification of one key: what each op does to the key's
//! state, and whether an observed reply is possible in a given state.
//!
//! It owns the semantics (memcached's get/gets/set/add/cas/incr/decr/delete
//! on a single item, no flags, no expiry) and the treatment of CAS uniques.
//! It must not look at time or at other ops: ordering is the search's job.
//! Called only by the search, once per candidate linearization step.
//!
//! # CAS uniques
//!
//! The store's unique is the log index of the write that produced the item,
//! but the checker assumes nothing about the numbers. It assumes only what a
//! client can rely on: each successful write (set, add, cas, incr, decr)
//! creates a new *version* of the item, every version has one unique, and
//! different versions have different uniques (the map from versions to
//! uniques is injective). A `gets` reports the current version's unique; a
//! `cas` succeeds iff its unique is the current version's.
//!
//! The observed uniques are opaque tokens. Linearizing an op may *bind* one:
//! a `gets` that returns `u`, or a `cas` on `u` that got `STORED`, says "`u`
//! is the current version's unique". The search keeps, per key:
//!
//! - `current`: the unique bound to the current version, if any op bound one;
//! - `bound`: every unique bound to any version so far, current or retired;
//! - `not_current`: uniques that a `cas ... EXISTS` proved are not the
//!   current version's while it was still unbound.
//!
//! Binding `u` to the current version is possible iff it is already bound to
//! it, or the version is unbound and `u` is neither bound to another version
//! nor excluded. Proving `u` is *not* the current version's is possible iff
//! the current version is not bound to `u`. A new version starts unbound with
//! nothing excluded. The version's identity is never stored: a retired
//! version is never current again (each write is linearized at most once),
//! so after it retires the only fact about it that matters is which unique
//! it used up, and that is in `bound`. Versions that were never observed can
//! take a fresh unique each, so whenever these rules allow a step, some
//! assignment of uniques to versions explains every observation so far. The
//! rules are exact: they reject a step only when no assignment can explain it.
//!
//! Uniques are numbered densely per key ([`UniqueId`]) before the search, so
//! the sets above are bitsets. A unique means something only with its key:
//! today they are log indexes of one replica group, distinct across keys,
//! but once keys are sharded (DESIGN §6) every group's log hands out the
//! same numbers. So nothing relates uniques of different keys, which also
//! keeps each key's check independent of the others.
//!
//! # Pending ops
//!
//! A pending op's reply is unknown, so linearizing it applies whatever the
//! op would do in that state. Only steps that change the state are offered
//! ([`Effect`]): a pending op that would fail (`NOT_STORED`, `EXISTS`,
//! `NOT_FOUND`, a read) changes nothing but may add a constraint, so placing
//! it is never better than leaving it out, which is always allowed.

use std::fmt;
use std::rc::Rc;

use crate::bits::Bits;
use crate::history::Quoted;

/// A CAS unique, renumbered densely per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct UniqueId(pub(crate) u32);

impl UniqueId {
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// A value shared between ops and states without copying.
pub(crate) type Value = Rc<[u8]>;

/// A completed op: its call and the reply observed, as one case each.
#[derive(Clone, Debug)]
pub(crate) enum Observed {
    GetMiss,
    GetHit(Value),
    GetsHit(Value, UniqueId),
    SetStored(Value),
    AddStored(Value),
    AddNotStored,
    CasStored(Value, UniqueId),
    CasExists(UniqueId),
    CasNotFound,
    ArithNumber { delta: u64, incr: bool, number: u64 },
    ArithNotFound,
    ArithNonNumeric,
    DeleteDeleted,
    DeleteNotFound,
}

/// A pending write: what it does if it takes effect.
#[derive(Clone, Debug)]
pub(crate) enum Effect {
    Set(Value),
    Add(Value),
    Cas(Value, UniqueId),
    Arith { delta: u64, incr: bool },
    Delete,
}

/// One key's state along a linearization.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct State {
    /// The item's value; `None` when the key holds no item.
    value: Option<Value>,
    /// The unique bound to the current version, if any.
    current: Option<UniqueId>,
    /// Uniques proven not to be the current (unbound) version's.
    not_current: Bits,
    /// Uniques bound to some version, current or retired.
    bound: Bits,
}

/// Why a completed op cannot take effect in a state. Sentences are about the
/// state the explanation prints next to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The reply needs an item and there is none.
    NoItem,
    /// The reply needs no item and there is one.
    ItemPresent,
    ValueDiffers,
    /// The reply says the unique is the current version's, but it names
    /// another version or was proven not to be this one's.
    UniqueIsNotCurrent,
    /// `EXISTS`, but the unique is the current version's.
    UniqueIsCurrent,
    /// incr/decr returned another number than the counter gives.
    NumberDiffers,
    /// incr/decr returned a number, but the value is not a counter.
    NotNumeric,
    /// incr/decr said non-numeric, but the value is a counter.
    Numeric,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self {
            Refusal::NoItem => "the reply needs an item and the key holds none",
            Refusal::ItemPresent => "the reply needs the key empty and it holds an item",
            Refusal::ValueDiffers => "the reply's value is not the item's",
            Refusal::UniqueIsNotCurrent => {
                "the unique belongs to another version, or was shown not to be this version's"
            }
            Refusal::UniqueIsCurrent => "EXISTS, but the unique is the current version's",
            Refusal::NumberDiffers => "the counter gives another number",
            Refusal::NotNumeric => "the item's value is not a decimal counter",
            Refusal::Numeric => "non-numeric, but the item's value is a counter",
        };
        f.write_str(why)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => write!(f, "no item"),
            Some(value) => {
                write!(f, "value {}", Quoted(value))?;
                match self.current {
                    Some(u) => write!(f, " (its unique is unique #{} of this key)", u.0),
                    None => write!(f, " (its unique not yet observed)"),
                }
            }
        }
    }
}

impl State {
    /// The key holds no item; `uniques` distinct uniques occur in its ops.
    pub(crate) fn new(uniques: usize) -> State {
        State {
            value: None,
            current: None,
            not_current: Bits::new(uniques),
            bound: Bits::new(uniques),
        }
    }

    fn item(&self) -> Result<&Value, Refusal> {
        self.value.as_ref().ok_or(Refusal::NoItem)
    }

    fn no_item(&self) -> Result<(), Refusal> {
        match self.value {
            None => Ok(()),
            Some(_) => Err(Refusal::ItemPresent),
        }
    }

    fn can_be_current(&self, u: UniqueId) -> bool {
        match self.current {
            Some(c) => c == u,
            None => !self.bound.get(u.index()) && !self.not_current.get(u.index()),
        }
    }

    /// Binds `u` to the current version. The caller checked `can_be_current`.
    fn bind(&mut self, u: UniqueId) {
        self.current = Some(u);
        self.bound.set(u.index());
    }

    /// Records that `u` is not the current version's unique, unless that is
    /// already implied (keeps equal states equal for the memo).
    fn exclude(&mut self, u: UniqueId) -> Result<(), Refusal> {
        match self.current {
            Some(c) if c == u => Err(Refusal::UniqueIsCurrent),
            Some(_) => Ok(()),
            None => {
                if !self.bound.get(u.index()) {
                    self.not_current.set(u.index());
                }
                Ok(())
            }
        }
    }

    /// A successful write: a new, unbound version (or no item).
    fn write(&mut self, value: Option<Value>) {
        self.value = value;
        self.current = None;
        self.not_current.clear_all();
    }

    fn arith(&self, delta: u64, incr: bool) -> Result<u64, Refusal> {
        let counter = parse_counter(self.item()?).ok_or(Refusal::NotNumeric)?;
        Ok(if incr {
            counter.wrapping_add(delta)
        } else {
            counter.saturating_sub(delta)
        })
    }

    /// The state after a completed op with reply `observed`, or why that
    /// reply is impossible here.
    pub(crate) fn step(&self, observed: &Observed) -> Result<State, Refusal> {
        let mut next = self.clone();
        match observed {
            Observed::GetMiss
            | Observed::CasNotFound
            | Observed::ArithNotFound
            | Observed::DeleteNotFound => self.no_item()?,
            Observed::GetHit(value) => {
                if self.item()? != value {
                    return Err(Refusal::ValueDiffers);
                }
            }
            Observed::GetsHit(value, u) => {
                if self.item()? != value {
                    return Err(Refusal::ValueDiffers);
                }
                if !self.can_be_current(*u) {
                    return Err(Refusal::UniqueIsNotCurrent);
                }
                next.bind(*u);
            }
            Observed::SetStored(value) => next.write(Some(value.clone())),
            Observed::AddStored(value) => {
                self.no_item()?;
                next.write(Some(value.clone()));
            }
            Observed::AddNotStored => {
                self.item()?;
            }
            Observed::CasStored(value, u) => {
                self.item()?;
                if !self.can_be_current(*u) {
                    return Err(Refusal::UniqueIsNotCurrent);
                }
                // The unique is used up by the version the cas replaces.
                next.bind(*u);
                next.write(Some(value.clone()));
            }
            Observed::CasExists(u) => {
                self.item()?;
                next.exclude(*u)?;
            }
            Observed::ArithNumber {
                delta,
                incr,
                number,
            } => {
                if self.arith(*delta, *incr)? != *number {
                    return Err(Refusal::NumberDiffers);
                }
                next.write(Some(counter_value(*number, self.item()?.len())));
            }
            Observed::ArithNonNumeric => {
                if parse_counter(self.item()?).is_some() {
                    return Err(Refusal::Numeric);
                }
            }
            Observed::DeleteDeleted => {
                self.item()?;
                next.write(None);
            }
        }
        Ok(next)
    }

    /// The state after a pending write takes effect here, or `None` if it
    /// would change nothing (see "Pending ops" above).
    pub(crate) fn take_effect(&self, effect: &Effect) -> Option<State> {
        let mut next = self.clone();
        match effect {
            Effect::Set(value) => next.write(Some(value.clone())),
            Effect::Add(value) => {
                self.no_item().ok()?;
                next.write(Some(value.clone()));
            }
            Effect::Cas(value, u) => {
                self.item().ok()?;
                if !self.can_be_current(*u) {
                    return None;
                }
                next.bind(*u);
                next.write(Some(value.clone()));
            }
            Effect::Arith { delta, incr } => {
                let number = self.arith(*delta, *incr).ok()?;
                next.write(Some(counter_value(number, self.item().ok()?.len())));
            }
            Effect::Delete => {
                self.item().ok()?;
                next.write(None);
            }
        }
        Some(next)
    }
}

/// incr/decr store the new counter as its decimal digits, padded with
/// spaces to the old value's length when no longer (memcached writes it
/// over the old value).
fn counter_value(number: u64, old_len: usize) -> Value {
    Rc::from(format!("{number:<old_len$}").into_bytes())
}

/// memcached's reading of a counter (strtoull, then memcached's checks):
/// optional leading whitespace, an optional sign, decimal digits that fit a
/// u64, then the end, a NUL or whitespace; a '-' negates modulo 2^64 and is
/// refused when the result is 2^63 or more. Written here rather than taken
/// from the store's `data` crate so that the oracle does not share code with
/// what it checks.
pub(crate) fn parse_counter(data: &[u8]) -> Option<u64> {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let start = data.iter().position(|b| !is_space(b))?;
    let mut rest = &data[start..];
    let negative = rest.first() == Some(&b'-');
    if matches!(rest.first(), Some(b'-' | b'+')) {
        rest = &rest[1..];
    }
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    if end == 0 || (end < rest.len() && rest[end] != 0 && !is_space(&rest[end])) {
        return None;
    }
    let magnitude = rest[..end].iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })?;
    if !negative {
        return Some(magnitude);
    }
    let value = 0u64.wrapping_sub(magnitude);
    (value < 1 << 63).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Value {
        Rc::from(s.as_bytes())
    }

    const U0: UniqueId = UniqueId(0);
    const U1: UniqueId = UniqueId(1);

    #[test]
    fn counters_follow_memcached() {
        assert_eq!(parse_counter(b" 12"), Some(12));
        assert_eq!(parse_counter(b"12 x"), Some(12));
        assert_eq!(parse_counter(b"12x"), None);
        assert_eq!(parse_counter(b""), None);
        assert_eq!(parse_counter(b"18446744073709551616"), None);
        assert_eq!(parse_counter(b"+5"), Some(5));
        assert_eq!(parse_counter(b"5\0x"), Some(5));
        assert_eq!(parse_counter(b"-0"), Some(0));
        assert_eq!(parse_counter(b"-18446744073709551615"), Some(1));
        assert_eq!(parse_counter(b"-5"), None);
        let s = State::new(0)
            .step(&Observed::SetStored(v("18446744073709551615")))
            .unwrap();
        let wrapped = Observed::ArithNumber {
            delta: 2,
            incr: true,
            number: 1,
        };
        let s = s.step(&wrapped).unwrap();
        let floored = Observed::ArithNumber {
            delta: 5,
            incr: false,
            number: 0,
        };
        // Written over the 20 digits it came from, padded with spaces.
        let padded = format!("0{}", " ".repeat(19));
        assert_eq!(
            s.step(&floored).unwrap().value.as_deref(),
            Some(padded.as_bytes())
        );
    }

    #[test]
    fn a_unique_names_one_version() {
        let s = State::new(2).step(&Observed::SetStored(v("a"))).unwrap();
        let s = s.step(&Observed::GetsHit(v("a"), U0)).unwrap();
        // The same version cannot also have unique 1.
        assert_eq!(
            s.step(&Observed::GetsHit(v("a"), U1)),
            Err(Refusal::UniqueIsNotCurrent)
        );
        // A new version with the same value cannot reuse unique 0.
        let s = s.step(&Observed::SetStored(v("a"))).unwrap();
        assert_eq!(
            s.step(&Observed::GetsHit(v("a"), U0)),
            Err(Refusal::UniqueIsNotCurrent)
        );
        assert!(s.step(&Observed::GetsHit(v("a"), U1)).is_ok());
    }

    #[test]
    fn exists_excludes_until_the_next_write() {
        let s = State::new(1).step(&Observed::SetStored(v("a"))).unwrap();
        let s = s.step(&Observed::CasExists(U0)).unwrap();
        assert_eq!(
            s.step(&Observed::CasStored(v("b"), U0)),
            Err(Refusal::UniqueIsNotCurrent)
        );
        assert!(s.take_effect(&Effect::Cas(v("b"), U0)).is_none());
        let s = s.step(&Observed::SetStored(v("c"))).unwrap();
        assert!(s.step(&Observed::CasStored(v("b"), U0)).is_ok());
    }

    #[test]
    fn cas_stored_uses_up_its_unique() {
        let s = State::new(1).step(&Observed::SetStored(v("a"))).unwrap();
        let s = s.step(&Observed::CasStored(v("b"), U0)).unwrap();
        assert_eq!(
            s.step(&Observed::CasStored(v("c"), U0)),
            Err(Refusal::UniqueIsNotCurrent)
        );
        assert!(s.step(&Observed::CasExists(U0)).is_ok());
    }
}
