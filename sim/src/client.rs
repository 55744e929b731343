//! Simulated clients: each issues one request at a time (get, gets, set,
//! add, cas, incr, decr, delete on a few keys) to the server it believes
//! leads, and records what it saw for the linearizability checker.
//!
//! A refusal (not the leader) certainly had no effect and is left out of
//! the history; a timeout or "outcome unknown" leaves a write pending (it
//! may take effect at any later time, or never) and a read out.

use std::collections::BTreeMap;

use bytes::Bytes;
use check::{Call, ClientId, Ret};
use data::command::{Op, StoreMode};
use data::exptime::NEVER;
use data::frame::ServerId;

use crate::world::{Event, World};

/// How long a client waits for a reply.
const CLIENT_TIMEOUT_MS: u64 = 1_500;
/// Pause between a client's requests at most.
const THINK_MS_MAX: u64 = 40;

#[derive(Clone, Debug)]
pub(crate) enum Request {
    Write { op: Op },
    Read { key: Vec<u8>, gets: bool },
}

#[derive(Clone, Debug)]
pub(crate) enum Reply {
    Done(Ret),
    /// Refused: certainly not executed. The leader, if the server knows it.
    NotLeader(Option<ServerId>),
    /// The write may or may not have happened.
    Unknown,
}

#[derive(Clone, Debug)]
pub(crate) struct InFlight {
    pub req: u64,
    pub key: Vec<u8>,
    pub call: Call,
    pub invoked_ns: u64,
}

impl InFlight {
    pub fn is_write(&self) -> bool {
        !matches!(self.call, Call::Get | Call::Gets)
    }
}

pub(crate) struct Client {
    /// The server this client believes leads.
    target: u64,
    pub inflight: Option<InFlight>,
    next_req: u64,
    /// The last CAS unique seen per key, for `cas`.
    uniques: BTreeMap<Vec<u8>, u64>,
    values: u64,
}

impl Client {
    pub fn new(id: usize, servers: u64) -> Client {
        Client {
            target: 1 + id as u64 % servers,
            inflight: None,
            next_req: 0,
            uniques: BTreeMap::new(),
            values: 0,
        }
    }
}

fn ns(ms: u64) -> u64 {
    ms * 1_000_000
}

impl World {
    pub(crate) fn client_wake(&mut self, c: usize) {
        if self.now >= self.clients_stop_ms || self.clients[c].inflight.is_some() {
            return;
        }
        let key = format!("k{}", self.rng.below(self.keys)).into_bytes();
        let kb = Bytes::from(key.clone());
        let client = &mut self.clients[c];
        client.values += 1;
        // Unique and numeric, so incr and decr have something to count.
        let value = format!("{}", (c as u64 + 1) * 1_000_000 + client.values).into_bytes();
        let store = |mode, data: &[u8], cas_unique| Op::Store {
            mode,
            key: kb.clone(),
            flags: 0,
            exptime: NEVER,
            data: Bytes::copy_from_slice(data),
            cas_unique,
        };
        let kind = self.rng.weighted(&[25, 10, 20, 5, 10, 10, 5, 10]);
        let (call, request) = match kind {
            0 => (
                Call::Get,
                Request::Read {
                    key: key.clone(),
                    gets: false,
                },
            ),
            1 => (
                Call::Gets,
                Request::Read {
                    key: key.clone(),
                    gets: true,
                },
            ),
            2 => (
                Call::Set(value.clone()),
                Request::Write {
                    op: store(StoreMode::Set, &value, 0),
                },
            ),
            3 => (
                Call::Add(value.clone()),
                Request::Write {
                    op: store(StoreMode::Add, &value, 0),
                },
            ),
            4 => {
                let unique = match self.clients[c].uniques.get(&key) {
                    Some(u) => *u,
                    None => self.rng.range(1, 50),
                };
                (
                    Call::Cas {
                        value: value.clone(),
                        unique,
                    },
                    Request::Write {
                        op: store(StoreMode::Cas, &value, unique),
                    },
                )
            }
            5 | 6 => {
                let delta = self.rng.range(1, 5);
                let incr = kind == 5;
                let call = if incr {
                    Call::Incr(delta)
                } else {
                    Call::Decr(delta)
                };
                (
                    call,
                    Request::Write {
                        op: Op::Arith {
                            key: kb.clone(),
                            delta,
                            incr,
                            cas_unique: 0,
                            initial: None,
                            touch: None,
                        },
                    },
                )
            }
            _ => (
                Call::Delete,
                Request::Write {
                    op: Op::Delete {
                        key: kb.clone(),
                        cas_unique: 0,
                    },
                },
            ),
        };
        let client = &mut self.clients[c];
        client.next_req += 1;
        let req = client.next_req;
        // Half the reads go to any server, as a client that spreads its
        // keys over every server does: a follower serves them after the
        // leader's read index.
        let server = if matches!(call, Call::Get | Call::Gets) && self.rng.below(2) == 0 {
            self.rng.range(1, self.opts.servers as u64)
        } else {
            self.clients[c].target
        };
        let client = &mut self.clients[c];
        client.inflight = Some(InFlight {
            req,
            key,
            call: call.clone(),
            invoked_ns: ns(self.now),
        });
        self.trace(|| format!("c{c}   -> n{server} #{req} {call}"));
        if let Some(delay) = self.client_link() {
            self.schedule(
                self.now + delay,
                Event::Request {
                    server,
                    client: c,
                    req,
                    request,
                },
            );
        }
        self.schedule(
            self.now + CLIENT_TIMEOUT_MS,
            Event::ClientTimeout { client: c, req },
        );
    }

    pub(crate) fn client_reply(&mut self, c: usize, req: u64, reply: Reply) {
        let Some(op) = self.clients[c].inflight.take_if(|op| op.req == req) else {
            return;
        };
        let n = self.opts.servers as u64;
        let mut pause = self.rng.range(0, THINK_MS_MAX);
        match reply {
            Reply::Done(ret) => {
                self.trace(|| format!("c{c}   <- #{req} {ret}"));
                if let Ret::HitCas { unique, .. } = &ret {
                    self.clients[c].uniques.insert(op.key.clone(), *unique);
                }
                self.history.push(check::Op::completed(
                    ClientId(c as u32),
                    op.key,
                    op.call,
                    op.invoked_ns,
                    ns(self.now),
                    ret,
                ));
            }
            Reply::NotLeader(hint) => {
                self.trace(|| format!("c{c}   <- #{req} not leader (hint {hint:?})"));
                self.clients[c].target = match hint {
                    Some(leader) if (1..=n).contains(&leader.0) => leader.0,
                    _ => self.rng.range(1, n),
                };
                pause += self.rng.range(5, 50);
            }
            Reply::Unknown => {
                self.trace(|| format!("c{c}   <- #{req} outcome unknown"));
                self.pending(c, op);
            }
        }
        self.schedule(self.now + pause, Event::ClientWake { client: c });
    }

    pub(crate) fn client_timeout(&mut self, c: usize, req: u64) {
        let Some(op) = self.clients[c].inflight.take_if(|op| op.req == req) else {
            return;
        };
        self.trace(|| format!("c{c}   #{req} timed out"));
        self.pending(c, op);
        let n = self.opts.servers as u64;
        self.clients[c].target = self.rng.range(1, n);
        self.schedule(self.now + 1, Event::ClientWake { client: c });
    }

    fn pending(&mut self, c: usize, op: InFlight) {
        if op.is_write() {
            self.history.push(check::Op::pending(
                ClientId(c as u32),
                op.key,
                op.call,
                op.invoked_ns,
            ));
        }
    }
}
