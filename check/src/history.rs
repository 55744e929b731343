//! The history model: what clients asked ([`Call`]), what they saw ([`Ret`]),
//! and when ([`Op`]'s invocation and completion times).
//!
//! This module owns the shape of a history and its well-formedness rules
//! (every reply fits its call, nothing completes before it was invoked);
//! [`History::new`] is the one place they are checked, so the search never
//! meets a malformed op. It must not judge linearizability; that is the
//! model's and the search's business. Callers are whoever records histories:
//! the deterministic simulator and the real-process fault tests.
//!
//! Times are readings of one monotonic clock shared by every client, in
//! nanoseconds by convention; only their order matters. An op precedes
//! another in real time only if it completed strictly before the other was
//! invoked: equal readings count as concurrent, which can only make the
//! checker more permissive, never wrongly strict.
//!
//! Ops that certainly had no effect (a `CLIENT_ERROR`, a request that never
//! left the client) belong nowhere in a history. Ops whose effect is unknown
//! (a timeout, `SERVER_ERROR ... outcome unknown`) are recorded with no
//! completion: they are pending.

use std::fmt;

use thiserror::Error;

/// Which client issued an op. Only used in explanations: real-time order
/// alone constrains the search, so a client may pipeline or move on after a
/// timeout without the checker caring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u32);

/// A request on one key, with memcached's semantics (flags and expiry are not
/// modelled: every item lives forever).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// `get`: the value or a miss.
    Get,
    /// `gets`: the value and its CAS unique, or a miss.
    Gets,
    /// `set`: always stores.
    Set(Vec<u8>),
    /// `add`: stores only if the key holds no item.
    Add(Vec<u8>),
    /// `cas`: stores only if the item's unique is still `unique`.
    Cas { value: Vec<u8>, unique: u64 },
    /// `incr`: adds `delta` to a decimal counter, wrapping at 2^64.
    Incr(u64),
    /// `decr`: subtracts `delta` from a decimal counter, stopping at 0.
    Decr(u64),
    /// `delete`.
    Delete,
}

/// A reply a client observed, in memcached's vocabulary.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// `get`/`gets` found no item (`END` alone).
    Miss,
    /// `get` found the item.
    Hit(Vec<u8>),
    /// `gets` found the item, with its CAS unique.
    HitCas { value: Vec<u8>, unique: u64 },
    /// `STORED` (set, add, cas).
    Stored,
    /// `NOT_STORED` (add on a present item).
    NotStored,
    /// `EXISTS` (cas whose unique is not the item's).
    Exists,
    /// `NOT_FOUND` (cas, incr, decr, delete on a missing item).
    NotFound,
    /// incr/decr: the counter's new value.
    Number(u64),
    /// incr/decr on a value that is not a decimal u64 (`CLIENT_ERROR cannot
    /// increment or decrement non-numeric value`).
    NonNumeric,
    /// `DELETED`.
    Deleted,
}

/// Whether `ret` is a reply memcached can give to `call`.
pub fn reply_fits(call: &Call, ret: &Ret) -> bool {
    matches!(
        (call, ret),
        (Call::Get, Ret::Miss | Ret::Hit(_))
            | (Call::Gets, Ret::Miss | Ret::HitCas { .. })
            | (Call::Set(_), Ret::Stored)
            | (Call::Add(_), Ret::Stored | Ret::NotStored)
            | (Call::Cas { .. }, Ret::Stored | Ret::Exists | Ret::NotFound)
            | (
                Call::Incr(_) | Call::Decr(_),
                Ret::Number(_) | Ret::NotFound | Ret::NonNumeric
            )
            | (Call::Delete, Ret::Deleted | Ret::NotFound)
    )
}

/// How an op ended, when the client knows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Completion {
    pub completed_ns: u64,
    pub ret: Ret,
}

/// One request of one client on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    pub client: ClientId,
    pub key: Vec<u8>,
    pub call: Call,
    pub invoked_ns: u64,
    /// `None`: pending. The op may have taken effect at any point after its
    /// invocation (even after the client's later ops), or never.
    pub completion: Option<Completion>,
}

impl Op {
    /// An op whose reply the client saw.
    pub fn completed(
        client: ClientId,
        key: impl Into<Vec<u8>>,
        call: Call,
        invoked_ns: u64,
        completed_ns: u64,
        ret: Ret,
    ) -> Op {
        Op {
            client,
            key: key.into(),
            call,
            invoked_ns,
            completion: Some(Completion { completed_ns, ret }),
        }
    }

    /// An op whose outcome is unknown.
    pub fn pending(client: ClientId, key: impl Into<Vec<u8>>, call: Call, invoked_ns: u64) -> Op {
        Op {
            client,
            key: key.into(),
            call,
            invoked_ns,
            completion: None,
        }
    }

    pub fn is_pending(&self) -> bool {
        self.completion.is_none()
    }

    pub fn completed_ns(&self) -> Option<u64> {
        self.completion.as_ref().map(|c| c.completed_ns)
    }

    pub fn ret(&self) -> Option<&Ret> {
        self.completion.as_ref().map(|c| &c.ret)
    }

    /// Whether the op can change the key (reads never can).
    pub fn is_write(&self) -> bool {
        !matches!(self.call, Call::Get | Call::Gets)
    }
}

/// Why a list of ops is not a history.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HistoryError {
    #[error("op {index}: {ret} is not a reply to {call}")]
    ReplyDoesNotFit {
        index: usize,
        call: String,
        ret: String,
    },
    #[error(
        "op {index}: completed at {completed_ns} ns, before its invocation at {invoked_ns} ns"
    )]
    CompletedBeforeInvoked {
        index: usize,
        invoked_ns: u64,
        completed_ns: u64,
    },
}

/// A well-formed list of ops, in any order. Ops are named by their index in
/// it (`#i` in explanations).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Op>,
}

impl History {
    pub fn new(ops: Vec<Op>) -> Result<History, HistoryError> {
        for (index, op) in ops.iter().enumerate() {
            let Some(completion) = &op.completion else {
                continue;
            };
            if !reply_fits(&op.call, &completion.ret) {
                return Err(HistoryError::ReplyDoesNotFit {
                    index,
                    call: op.call.to_string(),
                    ret: completion.ret.to_string(),
                });
            }
            if completion.completed_ns < op.invoked_ns {
                return Err(HistoryError::CompletedBeforeInvoked {
                    index,
                    invoked_ns: op.invoked_ns,
                    completed_ns: completion.completed_ns,
                });
            }
        }
        Ok(History { ops })
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Bytes as a quoted, escaped string: values are usually text.
pub(crate) struct Quoted<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Get => write!(f, "get"),
            Call::Gets => write!(f, "gets"),
            Call::Set(value) => write!(f, "set {}", Quoted(value)),
            Call::Add(value) => write!(f, "add {}", Quoted(value)),
            Call::Cas { value, unique } => write!(f, "cas {} unique {unique}", Quoted(value)),
            Call::Incr(delta) => write!(f, "incr {delta}"),
            Call::Decr(delta) => write!(f, "decr {delta}"),
            Call::Delete => write!(f, "delete"),
        }
    }
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ret::Miss => write!(f, "miss"),
            Ret::Hit(value) => write!(f, "hit {}", Quoted(value)),
            Ret::HitCas { value, unique } => write!(f, "hit {} unique {unique}", Quoted(value)),
            Ret::Stored => write!(f, "STORED"),
            Ret::NotStored => write!(f, "NOT_STORED"),
            Ret::Exists => write!(f, "EXISTS"),
            Ret::NotFound => write!(f, "NOT_FOUND"),
            Ret::Number(n) => write!(f, "{n}"),
            Ret::NonNumeric => write!(f, "non-numeric"),
            Ret::Deleted => write!(f, "DELETED"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client {} {} {} ",
            self.client.0,
            Quoted(&self.key),
            self.call
        )?;
        match &self.completion {
            Some(c) => write!(
                f,
                "-> {} [{}, {}] ns",
                c.ret, self.invoked_ns, c.completed_ns
            ),
            None => write!(f, "-> pending [{}, ...) ns", self.invoked_ns),
        }
    }
}
