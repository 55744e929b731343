//! Meta commands (DESIGN §5a). Each becomes the operation its classic twin
//! becomes, on the same paths: `mg` a read after the same read barrier, `ms`
//! a store, `md` a delete, `ma` an incr or decr that may create its
//! counter, each with the CAS unique `C` names; on a follower each is
//! forwarded to the leader as its meta line without `q` (so that every
//! forwarded request has one reply to match by position), and the reply is
//! handed back under the client's `q`.
//!
//! An `mg` that may change the item is a log entry (`Op::MetaGet`): one
//! with `T`, `N` or `R`, and a plain one that finds the item stale with no
//! recache won yet (the entry gives the win, so exactly one reader in the
//! whole group gets it). `md ... I` is `Op::Invalidate`, `md ... x`
//! `Op::EmptyValue`, `ms ... I C<unique>` a `StoreMode::CasOrStale` store;
//! `E` rides on the entry as `Command::unique`.

use data::command::{Initial, StoreMode};
use data::protocol::meta::{put_debug, ItemView, MetaRequest, MetaVerb, SetMode};
use data::state::lease;

use super::*;

impl Connection {
    pub(super) async fn handle_meta(&mut self, request: MetaRequest) {
        let now_s = clock::now_s();
        let counted = !self.forwarded_link;
        let shared = self.shared.clone();
        let counters = &shared.stats.counters;
        let key = request.key.clone();
        let cas_unique = request.compare_cas.unwrap_or(0);
        let resolve = |ttl: i64| exptime::resolve(ttl, now_s);
        match request.verb {
            MetaVerb::Noop => {
                self.finish_pending().await;
                self.output.extend_from_slice(b"MN\r\n");
            }
            MetaVerb::Debug => self.meta_read(request).await,
            MetaVerb::Get
                if request.ttl.is_none()
                    && request.vivify.is_none()
                    && request.recache.is_none() =>
            {
                self.meta_read(request).await
            }
            MetaVerb::Get => {
                if counted && request.ttl.is_some() {
                    Stats::bump(&counters.cmd_touch);
                }
                self.meta_get_logged(request).await
            }
            MetaVerb::Set => {
                // The line a follower forwards (a read served here needs none).
                let raw = loud_line(&request);
                if counted {
                    Stats::bump(&counters.cmd_set);
                }
                // As memcached: a unique makes a set or a replace a CAS, an
                // append or prepend checks it, an add ignores it.
                // `I` lets an older unique store the value stale.
                let (mode, cas_unique) = match (request.set_mode, request.compare_cas) {
                    (SetMode::Set | SetMode::Replace, Some(cas)) if request.invalidate => {
                        (StoreMode::CasOrStale, cas)
                    }
                    (SetMode::Set | SetMode::Replace, Some(cas)) => (StoreMode::Cas, cas),
                    (SetMode::Set, None) => (StoreMode::Set, 0),
                    (SetMode::Replace, None) => (StoreMode::Replace, 0),
                    (SetMode::Add, _) => (StoreMode::Add, 0),
                    // `N`: create the item on a miss, expiring then.
                    (SetMode::Append, _) if request.vivify.is_some() => {
                        (StoreMode::AppendOrCreate, cas_unique)
                    }
                    (SetMode::Prepend, _) if request.vivify.is_some() => {
                        (StoreMode::PrependOrCreate, cas_unique)
                    }
                    (SetMode::Append, _) => (StoreMode::Append, cas_unique),
                    (SetMode::Prepend, _) => (StoreMode::Prepend, cas_unique),
                };
                let exptime = match mode {
                    StoreMode::AppendOrCreate | StoreMode::PrependOrCreate => {
                        resolve(request.vivify.unwrap_or(0))
                    }
                    _ => resolve(request.ttl.unwrap_or(0)),
                };
                let op = Op::Store {
                    mode,
                    key,
                    flags: request.client_flags,
                    exptime,
                    data: request.data.clone(),
                    cas_unique,
                };
                let render = Render::Meta {
                    request: Box::new(request),
                    exptime,
                };
                // Counted as the classic command it extends.
                let kind = WriteKind::Store(match mode {
                    StoreMode::CasOrStale => StoreMode::Cas,
                    StoreMode::AppendOrCreate => StoreMode::Append,
                    StoreMode::PrependOrCreate => StoreMode::Prepend,
                    mode => mode,
                });
                self.queue_write(op, render, kind, raw, false).await;
            }
            MetaVerb::Delete => {
                let raw = loud_line(&request);
                // `C0` names no item's unique (none is 0): memcached's md
                // answers EX to it, where a delete with unique 0 checks none.
                let cas_unique = match request.compare_cas {
                    Some(0) => u64::MAX,
                    _ => cas_unique,
                };
                let op = if request.empty_value {
                    Op::EmptyValue {
                        key,
                        cas_unique,
                        flags: request.client_flags,
                        exptime: resolve(request.ttl.unwrap_or(0)),
                        stale: request.invalidate,
                    }
                } else if request.invalidate {
                    Op::Invalidate {
                        key,
                        cas_unique,
                        exptime: request.ttl.map(resolve),
                    }
                } else {
                    Op::Delete { key, cas_unique }
                };
                let render = Render::Meta {
                    request: Box::new(request),
                    exptime: exptime::NEVER,
                };
                self.queue_write(op, render, WriteKind::Delete, raw, false)
                    .await;
            }
            MetaVerb::Arith => {
                let raw = loud_line(&request);
                let initial = request.vivify.map(|ttl| Initial {
                    value: request.initial,
                    exptime: resolve(ttl),
                });
                let kind = if request.incr {
                    WriteKind::Incr
                } else {
                    WriteKind::Decr
                };
                let op = Op::Arith {
                    key,
                    delta: request.delta,
                    incr: request.incr,
                    cas_unique,
                    initial,
                    touch: request.ttl.map(resolve),
                };
                let render = Render::Meta {
                    request: Box::new(request),
                    exptime: exptime::NEVER,
                };
                self.queue_write(op, render, kind, raw, false).await;
            }
        }
    }

    /// An `mg` that may change the item: a log entry, so that its apply
    /// decides the recache win once for the whole group.
    async fn meta_get_logged(&mut self, request: MetaRequest) {
        let raw = loud_line(&request);
        let now_s = clock::now_s();
        let resolve = |ttl: i64| exptime::resolve(ttl, now_s);
        let op = Op::MetaGet {
            key: request.key.clone(),
            vivify: request.vivify.map(resolve),
            recache_before: request.recache.map(resolve),
            touch: request.ttl.map(resolve),
        };
        let kind = if request.ttl.is_some() {
            WriteKind::Touch
        } else {
            WriteKind::Get
        };
        let render = Render::Meta {
            request: Box::new(request),
            exptime: exptime::NEVER,
        };
        self.queue_write(op, render, kind, raw, false).await;
    }

    /// Whether this server's state holds `key` stale with no recache won:
    /// the next reader wins it, through the log.
    fn recache_to_give(&self, key: &[u8]) -> bool {
        let state = state::read(&self.shared.state);
        state
            .get(key, clock::now_s())
            .is_some_and(|item| item.lease() & lease::STALE != 0 && item.lease() & lease::WON == 0)
    }

    /// `mg` without `T`, `N` or `R`, and `me`: served here (after a read
    /// barrier where one is needed) or by the leader, like a get.
    async fn meta_read(&mut self, request: MetaRequest) {
        match self.read_at(Some(&request.key)).await {
            ReadAt::Leader => {
                let raw = loud_line(&request);
                let then = Then::Write {
                    kind: WriteKind::Get,
                    render: Render::Meta {
                        request: Box::new(request),
                        exptime: exptime::NEVER,
                    },
                    noreply: false,
                };
                self.forward(raw, Framing::Meta, false, true, then).await;
            }
            ReadAt::Refused(line) => Reply::Error(line).encode(&mut self.output),
            ReadAt::Here if request.verb == MetaVerb::Get && self.recache_to_give(&request.key) => {
                self.meta_get_logged(request).await
            }
            ReadAt::Here => {
                let now_s = clock::now_s();
                let debug = request.verb == MetaVerb::Debug;
                // `me` and `u` look without counting as a read (`h`, `l`).
                let reading = if debug || request.no_bump {
                    Reading::Peek
                } else {
                    Reading::Read
                };
                self.look_up(
                    std::slice::from_ref(&request.key),
                    reading,
                    |out, key, item, access| {
                        let item = item.map(|item| ItemView {
                            data: item.data(),
                            flags: item.flags(),
                            cas: item.cas(),
                            exptime: item.exptime(),
                            accessed_s: access.last_access_s(item.updated_s()),
                            fetched: access.fetched,
                            token_sent: item.lease() & lease::WON != 0,
                            stale: item.lease() & lease::STALE != 0,
                            won: false,
                        });
                        match (debug, item) {
                            (true, Some(item)) => put_debug(out, key, request.base64, item, now_s),
                            (true, None) => out.extend_from_slice(b"EN\r\n"),
                            (false, item) => request.put_item(out, item, now_s),
                        }
                    },
                );
                if let Backend::Cluster(cluster) = &self.backend {
                    Stats::bump(&cluster.view.reads_local);
                }
            }
        }
    }

    /// Hands a forwarded meta request's reply to the client under its own
    /// `q`, counting it from its code.
    pub(super) fn relay_meta(&mut self, kind: WriteKind, request: &MetaRequest, relayed: Relayed) {
        match relayed {
            Relayed::Reply(reply) => {
                let code = reply.get(..2).unwrap_or_default();
                if let Some(counted) = Counted::from_meta_code(kind, code, &reply) {
                    self.count(kind, counted);
                }
                if !request.leaves_out(code) {
                    self.output.extend_from_slice(&reply);
                }
            }
            Relayed::Failed(line) => Reply::Error(line).encode(&mut self.output),
        }
    }
}

/// The line a follower sends the leader for `request`: without `q`.
fn loud_line(request: &MetaRequest) -> Bytes {
    let mut raw = BytesMut::new();
    request.encode_loud(&mut raw);
    raw.freeze()
}
