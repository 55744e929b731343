//! A linearizability checker for histories of memcached-style key-value ops.
//!
//! Given what clients asked, what they saw and when ([`History`]), [`check`]
//! says whether some order of the ops, consistent with real time, explains
//! every reply under memcached's sequential semantics: [`Verdict::Linearizable`],
//! [`Verdict::NotLinearizable`] with the key and a witness, or
//! [`Verdict::Unknown`] when a limit stopped the search. A limit never turns
//! into a wrong verdict. Callers: the deterministic simulator and the
//! real-process fault tests. The crate is pure: no I/O, no clock, no
//! randomness, and it must never depend on the store's own crates, so that
//! the oracle shares no code with what it checks.
//!
//! # Layout
//!
//! - [`history`]: the history model (ops, calls, replies) and well-formedness.
//! - `model`: one key's sequential semantics, including CAS uniques as
//!   versions and pending writes.
//! - `search`: the Wing–Gong / Porcupine backtracking search over one key.
//! - `bits`: the bitsets the search and model memoize on.
//! - this file: splitting a history by key, limits, verdicts, explanations.
//!
//! # Why each key is checked alone
//!
//! Linearizability is local (Herlihy & Wing 1990, Theorem 1): a history is
//! linearizable iff its subhistory on each object is. Here every op names
//! exactly one key and reads or writes only that key's item, so the store is
//! a collection of independent objects, one per key. That holds for get,
//! gets, set, add, cas, incr, decr and delete. It does not hold for
//! `flush_all` or expiry, which this checker does not model. A multi-key
//! `get` is recorded as one op per key with the same times: checking those
//! separately is weaker than checking one atomic read, but a verdict of not
//! linearizable is still right. CAS uniques are related only within a key
//! (see `model` for why that is also the right contract under sharding).
//!
//! Every key starts with no item: a history must include the writes that
//! gave a key its first value.

#![forbid(unsafe_code)]

mod bits;
pub mod history;
mod model;
mod search;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::rc::Rc;

pub use history::{reply_fits, Call, ClientId, Completion, History, HistoryError, Op, Ret};

use history::Quoted;
use model::{Effect, Observed, UniqueId, Value};
use search::{Action, Found, KeyOp, KeySearch};

/// Ops on one key the search accepts. Each visited state holds a set of this
/// many bits in its frame (memoized in a compact form), and the search's work
/// per step is linear in it.
pub const OPS_PER_KEY_MAX: usize = 10_000;

/// Search steps (distinct (linearized set, state) pairs entered) per key.
/// Each step keeps one memo entry, about 100 to 300 bytes (more for keys
/// with thousands of distinct uniques), so this also bounds the checker's
/// memory to a few hundred MB in the worst case. A realistic history takes
/// about one step per op (tests/large_history.rs).
pub const SEARCH_STEPS_MAX: u64 = 1_000_000;

/// The checker's bounds, passed explicitly so tests and callers can tighten
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub ops_per_key_max: usize,
    pub search_steps_max: u64,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        ops_per_key_max: OPS_PER_KEY_MAX,
        search_steps_max: SEARCH_STEPS_MAX,
    };
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

/// What the checker concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some order consistent with real time explains every reply.
    Linearizable,
    /// No order explains the replies on `key`.
    NotLinearizable { key: Vec<u8>, witness: Witness },
    /// A limit stopped the search on `key`, and no other key was found not
    /// linearizable.
    Unknown { key: Vec<u8>, reason: UnknownReason },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    pub fn is_not_linearizable(&self) -> bool {
        matches!(self, Verdict::NotLinearizable { .. })
    }
}

/// Why the checker gave up on a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownReason {
    /// The key has more ops than [`Limits::ops_per_key_max`].
    TooManyOps { ops: usize, ops_max: usize },
    /// The search took [`Limits::search_steps_max`] steps on the key.
    StepLimit { steps_max: u64 },
}

/// Evidence for [`Verdict::NotLinearizable`]: the deepest point the search
/// reached. Ops are named by their index in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Witness {
    /// The longest sequence of ops on the key found consistent with real
    /// time and every reply in it.
    pub linearized: Vec<usize>,
    /// The completed ops that could have come next after it, each with why
    /// it could not: its reply is impossible in that state, or (`None` in
    /// the reason's place) it fits but nothing consistent follows.
    pub stuck: Vec<(usize, Option<String>)>,
    /// All of the above as sentences, with the ops spelled out.
    pub explanation: String,
}

/// A verdict and the work it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub verdict: Verdict,
    pub keys: usize,
    pub steps_total: u64,
    /// The most steps one key took: compare with `search_steps_max`.
    pub steps_key_max: u64,
}

/// Checks `history` with the default [`Limits`].
pub fn check(history: &History) -> Verdict {
    check_with(history, &Limits::DEFAULT).verdict
}

/// Checks `history` one key at a time, in key order. The first key found not
/// linearizable decides; otherwise the first key a limit stopped makes the
/// verdict unknown.
pub fn check_with(history: &History, limits: &Limits) -> Report {
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (index, op) in history.ops().iter().enumerate() {
        by_key.entry(&op.key).or_default().push(index);
    }
    let mut report = Report {
        verdict: Verdict::Linearizable,
        keys: by_key.len(),
        steps_total: 0,
        steps_key_max: 0,
    };
    let mut unknown = None;
    for (key, indexes) in by_key {
        if indexes.len() > limits.ops_per_key_max {
            let reason = UnknownReason::TooManyOps {
                ops: indexes.len(),
                ops_max: limits.ops_per_key_max,
            };
            unknown.get_or_insert((key, reason));
            continue;
        }
        let (ops, uniques) = key_ops(history, &indexes);
        let (found, steps) = KeySearch::new(ops, uniques).run(limits.search_steps_max);
        report.steps_total += steps;
        report.steps_key_max = report.steps_key_max.max(steps);
        match found {
            Found::Linearizable => {}
            Found::StepLimit => {
                let reason = UnknownReason::StepLimit {
                    steps_max: limits.search_steps_max,
                };
                unknown.get_or_insert((key, reason));
            }
            Found::NotLinearizable(dead_end) => {
                report.verdict = Verdict::NotLinearizable {
                    key: key.to_vec(),
                    witness: witness(history, key, indexes.len(), dead_end),
                };
                return report;
            }
        }
    }
    if let Some((key, reason)) = unknown {
        report.verdict = Verdict::Unknown {
            key: key.to_vec(),
            reason,
        };
    }
    report
}

/// The ops at `indexes` (one key's) for the search, with their uniques
/// renumbered densely, and how many distinct uniques there are. Pending
/// reads are dropped: they observed nothing and changed nothing.
fn key_ops(history: &History, indexes: &[usize]) -> (Vec<KeyOp>, usize) {
    let mut uniques: HashMap<u64, UniqueId> = HashMap::new();
    let mut unique = |u: u64| {
        let next = UniqueId(u32::try_from(uniques.len()).unwrap_or(u32::MAX));
        *uniques.entry(u).or_insert(next)
    };
    let value = |v: &[u8]| -> Value { Rc::from(v) };
    let mut ops = Vec::with_capacity(indexes.len());
    for &index in indexes {
        let op = &history.ops()[index];
        let action = match &op.completion {
            None => {
                let effect = match &op.call {
                    Call::Get | Call::Gets => continue,
                    Call::Set(v) => Effect::Set(value(v)),
                    Call::Add(v) => Effect::Add(value(v)),
                    Call::Cas {
                        value: v,
                        unique: u,
                    } => Effect::Cas(value(v), unique(*u)),
                    Call::Incr(delta) => Effect::Arith {
                        delta: *delta,
                        incr: true,
                    },
                    Call::Decr(delta) => Effect::Arith {
                        delta: *delta,
                        incr: false,
                    },
                    Call::Delete => Effect::Delete,
                };
                Action::Pending(effect)
            }
            Some(completion) => {
                let observed = match (&op.call, &completion.ret) {
                    (Call::Get | Call::Gets, Ret::Miss) => Observed::GetMiss,
                    (Call::Get, Ret::Hit(v)) => Observed::GetHit(value(v)),
                    (
                        Call::Gets,
                        Ret::HitCas {
                            value: v,
                            unique: u,
                        },
                    ) => Observed::GetsHit(value(v), unique(*u)),
                    (Call::Set(v), Ret::Stored) => Observed::SetStored(value(v)),
                    (Call::Add(v), Ret::Stored) => Observed::AddStored(value(v)),
                    (Call::Add(_), Ret::NotStored) => Observed::AddNotStored,
                    (
                        Call::Cas {
                            value: v,
                            unique: u,
                        },
                        Ret::Stored,
                    ) => Observed::CasStored(value(v), unique(*u)),
                    (Call::Cas { unique: u, .. }, Ret::Exists) => Observed::CasExists(unique(*u)),
                    (Call::Cas { .. }, Ret::NotFound) => Observed::CasNotFound,
                    (Call::Incr(delta), Ret::Number(number)) => Observed::ArithNumber {
                        delta: *delta,
                        incr: true,
                        number: *number,
                    },
                    (Call::Decr(delta), Ret::Number(number)) => Observed::ArithNumber {
                        delta: *delta,
                        incr: false,
                        number: *number,
                    },
                    (Call::Incr(_) | Call::Decr(_), Ret::NotFound) => Observed::ArithNotFound,
                    (Call::Incr(_) | Call::Decr(_), Ret::NonNumeric) => Observed::ArithNonNumeric,
                    (Call::Delete, Ret::Deleted) => Observed::DeleteDeleted,
                    (Call::Delete, Ret::NotFound) => Observed::DeleteNotFound,
                    (call, ret) => unreachable!(
                        "History::new admits only replies that fit their call, not {ret} to {call}"
                    ),
                };
                Action::Completed {
                    completed_ns: completion.completed_ns,
                    observed,
                }
            }
        };
        ops.push(KeyOp {
            index,
            invoked_ns: op.invoked_ns,
            action,
        });
    }
    (ops, uniques.len())
}

fn witness(history: &History, key: &[u8], ops_on_key: usize, dead_end: search::DeadEnd) -> Witness {
    let ops = history.ops();
    let mut text = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(
        text,
        "no order of the {ops_on_key} ops on key {} explains every reply.",
        Quoted(key)
    );
    let _ = writeln!(
        text,
        "The longest consistent prefix found takes effect in this order ({} ops):",
        dead_end.prefix.len()
    );
    for &i in &dead_end.prefix {
        let _ = writeln!(text, "  #{i} {}", ops[i]);
    }
    let _ = writeln!(
        text,
        "leaving {}. No op that may come next can:",
        dead_end.state
    );
    let stuck: Vec<(usize, Option<String>)> = dead_end
        .stuck
        .iter()
        .map(|s| (s.index, s.refusal.map(|r| r.to_string())))
        .collect();
    for (i, why) in &stuck {
        let why = why
            .as_deref()
            .unwrap_or("its reply fits, but no consistent order of the rest follows");
        let _ = writeln!(text, "  #{i} {}: {why}", ops[*i]);
    }
    Witness {
        linearized: dead_end.prefix,
        stuck,
        explanation: text,
    }
}
