//! Test support shared by the integration tests: a brute-force checker that
//! the real one is compared with, a simulator of linearizable executions, a
//! mutator that perturbs their replies and times, and short op builders.
//!
//! Nothing here may use the checker's own model or search: the brute force
//! is an independent oracle. It is written the simplest way (every order,
//! every key in one map, concrete versions, unique constraints solved at the
//! end of each step) and is only fit for a handful of ops.

#![allow(dead_code)] // Each test file uses part of the support.

use std::collections::{BTreeMap, HashMap};

use check::{Call, ClientId, History, Op, Ret};
use rand::Rng;

/// Ops the brute force accepts: orders grow as n!.
pub const BRUTE_FORCE_OPS_MAX: usize = 8;

// ---------------------------------------------------------------- builders

pub fn done(
    client: u32,
    key: &str,
    call: Call,
    invoked_ns: u64,
    completed_ns: u64,
    ret: Ret,
) -> Op {
    Op::completed(ClientId(client), key, call, invoked_ns, completed_ns, ret)
}

pub fn pending(client: u32, key: &str, call: Call, invoked_ns: u64) -> Op {
    Op::pending(ClientId(client), key, call, invoked_ns)
}

pub fn v(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

pub fn set(s: &str) -> Call {
    Call::Set(v(s))
}

pub fn add(s: &str) -> Call {
    Call::Add(v(s))
}

pub fn cas(s: &str, unique: u64) -> Call {
    Call::Cas {
        value: v(s),
        unique,
    }
}

pub fn hit(s: &str) -> Ret {
    Ret::Hit(v(s))
}

pub fn hit_cas(s: &str, unique: u64) -> Ret {
    Ret::HitCas {
        value: v(s),
        unique,
    }
}

pub fn history(ops: Vec<Op>) -> History {
    History::new(ops).expect("test histories are well formed")
}

// -------------------------------------------------------------- brute force

/// The whole store along one candidate order: every key, with concrete
/// version numbers, and the constraints on uniques met so far.
#[derive(Clone, Debug, Default)]
struct World {
    /// key -> (value, version).
    items: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    versions: u64,
    /// (key, observed unique, version): the unique is that version's.
    /// Uniques are related per key only: with sharding, two replica groups'
    /// logs hand out the same numbers.
    equal: Vec<(Vec<u8>, u64, u64)>,
    /// (key, observed unique, version): the unique is not that version's.
    unequal: Vec<(Vec<u8>, u64, u64)>,
}

impl World {
    /// Whether some map from versions to uniques, injective on each key's
    /// versions, meets every constraint. Versions nobody observed take fresh
    /// uniques, so only the equalities and the inequalities that contradict
    /// them matter.
    fn satisfiable(&self) -> bool {
        let mut by_unique: HashMap<(&[u8], u64), u64> = HashMap::new();
        let mut by_version: HashMap<u64, u64> = HashMap::new();
        for (key, u, ver) in &self.equal {
            if *by_unique.entry((key, *u)).or_insert(*ver) != *ver {
                return false;
            }
            if *by_version.entry(*ver).or_insert(*u) != *u {
                return false;
            }
        }
        self.unequal
            .iter()
            .all(|(key, u, ver)| by_unique.get(&(&key[..], *u)) != Some(ver))
    }

    fn write(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        self.versions += 1;
        match value {
            Some(value) => {
                self.items.insert(key.to_vec(), (value, self.versions));
            }
            None => {
                self.items.remove(key);
            }
        }
    }

    /// Every (reply, world after) the op can produce here. A `gets` reply's
    /// unique is the version number; the caller relates it to the observed
    /// one.
    fn outcomes(&self, op: &Op) -> Vec<(Ret, World)> {
        let item = self.items.get(&op.key).cloned();
        let mut next = self.clone();
        let ret = match (&op.call, item) {
            (Call::Get | Call::Gets, None) => Ret::Miss,
            (Call::Get, Some((value, _))) => Ret::Hit(value),
            (Call::Gets, Some((value, version))) => Ret::HitCas {
                value,
                unique: version,
            },
            (Call::Set(value), _) => {
                next.write(&op.key, Some(value.clone()));
                Ret::Stored
            }
            (Call::Add(value), None) => {
                next.write(&op.key, Some(value.clone()));
                Ret::Stored
            }
            (Call::Add(_), Some(_)) => Ret::NotStored,
            (Call::Cas { .. }, None) => Ret::NotFound,
            (Call::Cas { value, unique }, Some((_, version))) => {
                // Whether the unique is this version's is unknown here: both.
                let mut stored = next.clone();
                stored.equal.push((op.key.clone(), *unique, version));
                stored.write(&op.key, Some(value.clone()));
                next.unequal.push((op.key.clone(), *unique, version));
                return vec![(Ret::Stored, stored), (Ret::Exists, next)];
            }
            (Call::Incr(_) | Call::Decr(_), None) => Ret::NotFound,
            (Call::Incr(delta) | Call::Decr(delta), Some((value, _))) => match strtoull(&value) {
                None => Ret::NonNumeric,
                Some(n) => {
                    let n = if matches!(op.call, Call::Incr(_)) {
                        n.wrapping_add(*delta)
                    } else {
                        n.saturating_sub(*delta)
                    };
                    next.write(&op.key, Some(padded(n, value.len())));
                    Ret::Number(n)
                }
            },
            (Call::Delete, None) => Ret::NotFound,
            (Call::Delete, Some(_)) => {
                next.write(&op.key, None);
                Ret::Deleted
            }
        };
        vec![(ret, next)]
    }

    /// The worlds after `op` takes effect with its observed reply (any
    /// reply, if pending), whose constraints are still satisfiable.
    fn after(&self, op: &Op) -> Vec<World> {
        let mut worlds = Vec::new();
        for (ret, mut world) in self.outcomes(op) {
            let fits = match (op.ret(), &ret) {
                (None, _) => true,
                (
                    Some(Ret::HitCas { value, unique }),
                    Ret::HitCas {
                        value: got,
                        unique: version,
                    },
                ) => {
                    world.equal.push((op.key.clone(), *unique, *version));
                    value == got
                }
                (Some(observed), _) => *observed == ret,
            };
            if fits && world.satisfiable() {
                worlds.push(world);
            }
        }
        worlds
    }
}

/// strtoull as memcached reads a counter, written independently of the
/// checker's copy.
fn strtoull(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let text = text.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    let rest = &text[digits.len()..];
    let ends_well = rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    if digits.is_empty() || !ends_well {
        return None;
    }
    digits.parse().ok()
}

/// Whether some order of `ops` (every completed op, any subset of pending
/// ones), with `a` before `b` whenever `a` completed strictly before `b` was
/// invoked, explains every reply.
pub fn brute_force(ops: &[Op]) -> bool {
    assert!(
        ops.len() <= BRUTE_FORCE_OPS_MAX,
        "brute force is for tiny histories"
    );
    let all = (1u32 << ops.len()) - 1;
    orders(ops, all, &World::default())
}

fn orders(ops: &[Op], remaining: u32, world: &World) -> bool {
    let left = |i: usize| remaining & (1 << i) != 0;
    if (0..ops.len()).all(|i| !left(i) || ops[i].is_pending()) {
        return true;
    }
    (0..ops.len()).filter(|&i| left(i)).any(|x| {
        let blocked = (0..ops.len())
            .any(|y| left(y) && matches!(ops[y].completed_ns(), Some(c) if c < ops[x].invoked_ns));
        !blocked
            && world
                .after(&ops[x])
                .iter()
                .any(|next| orders(ops, remaining & !(1 << x), next))
    })
}

// ---------------------------------------------------------------- simulator

/// The shape of a simulated execution.
#[derive(Clone, Copy, Debug)]
pub struct Sim {
    pub clients: u32,
    pub ops: usize,
    pub keys: usize,
    /// Chance, in percent, that an op's outcome is unknown to its client.
    pub pending_percent: u32,
}

const VALUES: [&str; 6] = ["a", "b", "1", "9", " 7", "18446744073709551615"];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Get,
    Gets,
    Set,
    Add,
    Cas,
    Incr,
    Decr,
    Delete,
}

fn kind(rng: &mut impl Rng) -> Kind {
    match rng.gen_range(0..100) {
        0..20 => Kind::Get,
        20..35 => Kind::Gets,
        35..50 => Kind::Set,
        50..60 => Kind::Add,
        60..75 => Kind::Cas,
        75..85 => Kind::Incr,
        85..90 => Kind::Decr,
        _ => Kind::Delete,
    }
}

fn value<R: Rng + ?Sized>(rng: &mut R) -> Vec<u8> {
    v(VALUES[rng.gen_range(0..VALUES.len())])
}

struct Planned {
    client: u32,
    key: String,
    kind: Kind,
    invoked_ns: u64,
    completed_ns: u64,
    /// When the op takes effect in the real execution.
    effect_ns: u64,
    pending: bool,
    took_effect: bool,
}

/// A linearizable history by construction: each client issues ops one after
/// another at random times; each op takes effect at a random instant inside
/// its interval, in that order, on a reference store whose uniques are
/// increasing log indexes with gaps. A pending op takes effect at some
/// instant after its invocation, or never, and its client moves on.
pub fn simulate(rng: &mut impl Rng, sim: &Sim) -> Vec<Op> {
    let mut clock_ns = vec![0u64; sim.clients as usize];
    let mut plan = Vec::with_capacity(sim.ops);
    for _ in 0..sim.ops {
        let client = rng.gen_range(0..sim.clients);
        let invoked_ns = clock_ns[client as usize] + rng.gen_range(0..3);
        let completed_ns = invoked_ns + rng.gen_range(0..8);
        let pending = rng.gen_range(0..100) < sim.pending_percent;
        let effect_ns = if pending {
            invoked_ns + rng.gen_range(0..20)
        } else {
            rng.gen_range(invoked_ns..=completed_ns)
        };
        clock_ns[client as usize] = completed_ns + 1;
        plan.push(Planned {
            client,
            key: format!("k{}", rng.gen_range(0..sim.keys)),
            kind: kind(rng),
            invoked_ns,
            completed_ns,
            effect_ns,
            pending,
            took_effect: !pending || rng.gen_bool(0.5),
        });
    }
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by_key(|&i| (plan[i].effect_ns, i));

    let mut items: HashMap<String, (Vec<u8>, u64)> = HashMap::new();
    let mut log_index = 0u64;
    let mut seen_uniques: HashMap<String, Vec<u64>> = HashMap::new();
    let mut ops: Vec<Option<Op>> = vec![None; plan.len()];
    for i in order {
        let p = &plan[i];
        let item = items.get(&p.key).cloned();
        let call = match p.kind {
            Kind::Get => Call::Get,
            Kind::Gets => Call::Gets,
            Kind::Set => Call::Set(value(rng)),
            Kind::Add => Call::Add(value(rng)),
            Kind::Cas => {
                let seen = seen_uniques.get(&p.key).cloned().unwrap_or_default();
                let unique = match rng.gen_range(0..100) {
                    0..70 if !seen.is_empty() => seen[rng.gen_range(0..seen.len())],
                    0..85 if item.is_some() => item.as_ref().map_or(0, |i| i.1),
                    _ => rng.gen_range(1..40),
                };
                Call::Cas {
                    value: value(rng),
                    unique,
                }
            }
            Kind::Incr => Call::Incr(rng.gen_range(0..3)),
            Kind::Decr => Call::Decr(rng.gen_range(0..3)),
            Kind::Delete => Call::Delete,
        };
        let ret = if p.took_effect {
            let mut write = |value: Option<Vec<u8>>| {
                log_index += rng.gen_range(1..4);
                match value {
                    Some(value) => items.insert(p.key.clone(), (value, log_index)),
                    None => items.remove(&p.key),
                };
            };
            match (&call, item) {
                (Call::Get | Call::Gets, None) => Ret::Miss,
                (Call::Get, Some((value, _))) => Ret::Hit(value),
                (Call::Gets, Some((value, unique))) => {
                    seen_uniques.entry(p.key.clone()).or_default().push(unique);
                    Ret::HitCas { value, unique }
                }
                (Call::Set(value), _) | (Call::Add(value), None) => {
                    write(Some(value.clone()));
                    Ret::Stored
                }
                (Call::Add(_), Some(_)) => Ret::NotStored,
                (Call::Cas { .. }, None) => Ret::NotFound,
                (Call::Cas { value, unique }, Some((_, current))) => {
                    if *unique == current {
                        write(Some(value.clone()));
                        Ret::Stored
                    } else {
                        Ret::Exists
                    }
                }
                (Call::Incr(_) | Call::Decr(_), None) => Ret::NotFound,
                (Call::Incr(delta) | Call::Decr(delta), Some((value, _))) => match strtoull(&value)
                {
                    None => Ret::NonNumeric,
                    Some(n) => {
                        let n = if matches!(call, Call::Incr(_)) {
                            n.wrapping_add(*delta)
                        } else {
                            n.saturating_sub(*delta)
                        };
                        write(Some(padded(n, value.len())));
                        Ret::Number(n)
                    }
                },
                (Call::Delete, None) => Ret::NotFound,
                (Call::Delete, Some(_)) => {
                    write(None);
                    Ret::Deleted
                }
            }
        } else {
            Ret::Miss // never observed: the op is pending
        };
        let client = ClientId(p.client);
        ops[i] = Some(if p.pending {
            Op::pending(client, p.key.clone(), call, p.invoked_ns)
        } else {
            Op::completed(
                client,
                p.key.clone(),
                call,
                p.invoked_ns,
                p.completed_ns,
                ret,
            )
        });
    }
    ops.into_iter()
        .map(|op| op.expect("every planned op was executed or skipped"))
        .collect()
}

// ------------------------------------------------------------------ mutator

/// A reply that fits `call`, chosen at random among plausible ones.
fn random_ret(rng: &mut impl Rng, call: &Call, uniques: &[u64], written: &[Vec<u8>]) -> Ret {
    // Reads mostly observe a value some op wrote: the interesting anomalies.
    let value = |rng: &mut dyn rand::RngCore| {
        if written.is_empty() || rng.gen_bool(0.3) {
            value(rng)
        } else {
            written[rng.gen_range(0..written.len())].clone()
        }
    };
    let unique = |rng: &mut dyn rand::RngCore| {
        if uniques.is_empty() || rng.gen_bool(0.2) {
            rng.gen_range(1..40)
        } else {
            uniques[rng.gen_range(0..uniques.len())]
        }
    };
    match call {
        Call::Get => match rng.gen_range(0..3) {
            0 => Ret::Miss,
            _ => Ret::Hit(value(rng)),
        },
        Call::Gets => match rng.gen_range(0..3) {
            0 => Ret::Miss,
            _ => Ret::HitCas {
                value: value(rng),
                unique: unique(rng),
            },
        },
        Call::Set(_) => Ret::Stored,
        Call::Add(_) => [Ret::Stored, Ret::NotStored][rng.gen_range(0..2)].clone(),
        Call::Cas { .. } => [Ret::Stored, Ret::Exists, Ret::NotFound][rng.gen_range(0..3)].clone(),
        Call::Incr(_) | Call::Decr(_) => match rng.gen_range(0..4) {
            0 => Ret::NotFound,
            1 => Ret::NonNumeric,
            _ => Ret::Number(rng.gen_range(0..12)),
        },
        Call::Delete => [Ret::Deleted, Ret::NotFound][rng.gen_range(0..2)].clone(),
    }
}

/// Perturbs one op of `ops`: its reply, its gets unique, its times, or
/// whether its outcome is known. The result is still a well-formed history.
pub fn mutate(rng: &mut impl Rng, ops: &mut [Op]) {
    if ops.is_empty() {
        return;
    }
    let uniques: Vec<u64> = ops
        .iter()
        .filter_map(|op| match (op.ret(), &op.call) {
            (Some(Ret::HitCas { unique, .. }), _) => Some(*unique),
            (_, Call::Cas { unique, .. }) => Some(*unique),
            _ => None,
        })
        .collect();
    let written: Vec<Vec<u8>> = ops
        .iter()
        .filter_map(|op| match &op.call {
            Call::Set(value) | Call::Add(value) | Call::Cas { value, .. } => Some(value.clone()),
            _ => None,
        })
        .collect();
    let i = rng.gen_range(0..ops.len());
    let op = &mut ops[i];
    match (rng.gen_range(0..10), op.completion.as_mut()) {
        (0, Some(_)) => op.completion = None,
        (1, Some(c)) => {
            // Slide the whole interval, keeping its length.
            let length_ns = c.completed_ns - op.invoked_ns;
            op.invoked_ns = rng.gen_range(0..op.invoked_ns + 10);
            c.completed_ns = op.invoked_ns + length_ns;
        }
        (2, Some(c)) => c.completed_ns = op.invoked_ns,
        (_, Some(c)) => c.ret = random_ret(rng, &op.call, &uniques, &written),
        (_, None) => {
            let ret = random_ret(rng, &op.call, &uniques, &written);
            op.completion = Some(check::Completion {
                completed_ns: op.invoked_ns + rng.gen_range(0..10),
                ret,
            });
        }
    }
}

/// A counter written over its old value: padded with spaces to the old
/// length when no longer (memcached's in-place incr/decr).
fn padded(n: u64, old_len: usize) -> Vec<u8> {
    format!("{n:<old_len$}").into_bytes()
}
