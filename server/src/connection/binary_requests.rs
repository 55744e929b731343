//! Binary-protocol requests (DESIGN §1b). A request whose first byte is
//! 0x80 is a binary one, on any connection and at any point in it (memcached
//! decides once per connection; a text request never starts with that byte,
//! so deciding per request only accepts more). Each becomes the operation
//! its text twin becomes, on the same paths: reads from the local state
//! after the same read barrier, writes through the write path, and on a
//! follower both forwarded to the leader, as the same binary packet in its
//! loud form (a quiet opcode made loud, so that every forwarded request has
//! a reply to match by position), its reply handed back under the quiet
//! rules of the client's own opcode. Only the bytes in and out differ
//! ([`data::protocol::binary`]).

use data::command::Initial;
use data::limits::Limits;
use data::protocol::auth::{sasl_plain, SASL_MECHANISMS};
use data::protocol::binary::{
    loud, parse_binary, put_error, put_error_text, put_hit, put_miss, put_response, put_stat,
    put_success, refuse_unauthenticated, response_status, suppressed, BinaryCommand, BinaryError,
    BinaryRequest, Echo, Status, ARITH_NO_CREATE,
};

use super::*;

impl Connection {
    /// Parses and handles the binary request at the front of the input;
    /// `None` when more bytes are needed.
    pub(super) async fn binary_request(&mut self, limits: &Limits) -> Option<Next> {
        let parsed = if self.authenticated {
            parse_binary(&self.input, limits)
        } else if !self.shared.auth.sasl_enabled() {
            // Only a text login (`-Y`) was configured: a binary client has
            // no way to authenticate.
            return Some(Next::Close);
        } else {
            match refuse_unauthenticated(&self.input) {
                Some(refused) => Err(refused),
                None => parse_binary(&self.input, limits),
            }
        };
        match parsed {
            Ok(None) => None,
            Ok(Some((request, consumed))) => {
                let raw = self.input.split_to(consumed).freeze();
                Some(self.handle_binary(request, raw).await)
            }
            Err(BinaryError::Close) => Some(Next::Close),
            Err(BinaryError::Reply {
                echo,
                status,
                consumed,
                discard,
                close,
            }) => {
                self.input.advance(consumed);
                self.discard_bytes = discard;
                self.finish_pending().await;
                put_error(&mut self.output, echo, status);
                Some(if close { Next::Close } else { Next::Continue })
            }
            Err(BinaryError::TooLarge {
                echo,
                consumed,
                discard,
                key,
                delete,
            }) => {
                self.input.advance(consumed);
                self.discard_bytes = discard;
                let mut reply = BytesMut::new();
                put_error(&mut reply, echo, Status::TooLarge);
                self.too_large(key, delete, Some(reply.freeze())).await;
                Some(Next::Continue)
            }
        }
    }

    async fn handle_binary(&mut self, request: BinaryRequest, raw: Bytes) -> Next {
        let BinaryRequest {
            echo,
            quiet,
            command,
        } = request;
        // What a follower sends the leader: the loud form.
        let raw = if quiet {
            let mut loud_raw = BytesMut::from(&raw[..]);
            loud_raw[1] = loud(echo.opcode).0;
            loud_raw.freeze()
        } else {
            raw
        };
        let render = |key: Bytes| Render::Binary(binary::Render { echo, key });
        let counted = !self.forwarded_link;
        let counters = self.shared.clone();
        let counters = &counters.stats.counters;
        let now_s = clock::now_s();
        match command {
            BinaryCommand::Get { key, .. } => self.binary_get(echo, key, raw).await,
            BinaryCommand::GetAndTouch { key, exptime, .. } => {
                let op = Op::GetAndTouch {
                    keys: vec![key.clone()],
                    exptime: exptime::resolve(exptime, now_s),
                };
                let kind = WriteKind::GetAndTouch(1);
                self.queue_write(op, render(key), kind, raw, false).await;
                self.bound_pending_values().await;
            }
            BinaryCommand::Touch { key, exptime } => {
                if counted {
                    Stats::bump(&counters.cmd_touch);
                }
                // A touch answers with the item's flags and CAS: the one
                // operation that reads them as it touches is gat's.
                let op = Op::GetAndTouch {
                    keys: vec![key.clone()],
                    exptime: exptime::resolve(exptime, now_s),
                };
                self.queue_write(op, render(key), WriteKind::Touch, raw, false)
                    .await;
            }
            BinaryCommand::Store {
                mode,
                key,
                flags,
                exptime,
                data,
                cas,
            } => {
                if counted {
                    Stats::bump(&counters.cmd_set);
                }
                let op = Op::Store {
                    mode,
                    key,
                    flags,
                    exptime: exptime::resolve(exptime, now_s),
                    data,
                    cas_unique: cas,
                };
                let kind = WriteKind::Store(mode);
                self.queue_write(op, render(Bytes::new()), kind, raw, false)
                    .await;
            }
            BinaryCommand::Delete { key, cas } => {
                let op = Op::Delete {
                    key,
                    cas_unique: cas,
                };
                self.queue_write(op, render(Bytes::new()), WriteKind::Delete, raw, false)
                    .await;
            }
            BinaryCommand::Arith {
                key,
                incr,
                delta,
                initial,
                exptime,
                cas,
            } => {
                let initial = (exptime != ARITH_NO_CREATE).then(|| Initial {
                    value: initial,
                    exptime: exptime::resolve(i64::from(exptime), now_s),
                });
                let op = Op::Arith {
                    key,
                    delta,
                    incr,
                    cas_unique: cas,
                    initial,
                    touch: None,
                };
                let kind = if incr {
                    WriteKind::Incr
                } else {
                    WriteKind::Decr
                };
                self.queue_write(op, render(Bytes::new()), kind, raw, false)
                    .await;
            }
            BinaryCommand::Flush { delay } => {
                if counted {
                    Stats::bump(&counters.cmd_flush);
                }
                let deadline_s = if delay <= 0 {
                    0
                } else {
                    exptime::resolve(delay, now_s)
                };
                let op = Op::FlushAll { deadline_s };
                self.queue_write(op, render(Bytes::new()), WriteKind::Other, raw, false)
                    .await;
            }
            BinaryCommand::Noop => {
                self.finish_pending().await;
                put_success(&mut self.output, echo, 0);
            }
            BinaryCommand::Version => {
                self.finish_pending().await;
                let ok = Status::NoError as u16;
                put_response(&mut self.output, echo, ok, 0, &[], &[], VERSION.as_bytes());
            }
            BinaryCommand::Quit => {
                self.finish_pending().await;
                put_success(&mut self.output, echo, 0);
                return Next::Close;
            }
            BinaryCommand::Stat { group } => self.binary_stats(echo, &group).await,
            BinaryCommand::SaslListMechs => {
                self.finish_pending().await;
                if self.shared.auth.sasl_enabled() {
                    let ok = Status::NoError as u16;
                    let mechs = SASL_MECHANISMS.as_bytes();
                    put_response(&mut self.output, echo, ok, 0, &[], &[], mechs);
                } else {
                    put_error(&mut self.output, echo, Status::UnknownCommand);
                }
            }
            BinaryCommand::SaslAuth {
                mech,
                message,
                step,
            } => self.sasl_auth(echo, &mech, &message, step).await,
        }
        Next::Continue
    }

    /// SASL Auth or Step (`step`), as memcached with Cyrus SASL answers
    /// them: either leaves the connection unauthenticated until one
    /// succeeds. PLAIN's message comes with the Auth, or (from a client
    /// that sends no initial response) with a Step after it; a failed Step
    /// may be tried again.
    async fn sasl_auth(&mut self, echo: Echo, mech: &[u8], message: &[u8], step: bool) {
        self.finish_pending().await;
        if !self.shared.auth.sasl_enabled() {
            put_error(&mut self.output, echo, Status::UnknownCommand);
            return;
        }
        self.authenticated = false;
        let plain = mech == SASL_MECHANISMS.as_bytes();
        if !step {
            self.sasl_begun = plain && message.is_empty();
            if self.sasl_begun {
                let more = Status::AuthContinue as u16;
                put_response(&mut self.output, echo, more, 0, &[], &[], &[]);
                return;
            }
        }
        let counters = &self.shared.stats.counters;
        Stats::bump(&counters.auth_cmds);
        let user = (if step { self.sasl_begun } else { plain })
            .then(|| sasl_plain(message))
            .flatten();
        if user.is_some_and(|(user, password)| self.shared.auth.check_sasl(user, password)) {
            self.authenticated = true;
            self.sasl_begun = false;
            let ok = Status::NoError as u16;
            put_response(&mut self.output, echo, ok, 0, &[], &[], b"Authenticated");
        } else {
            Stats::bump(&counters.auth_errors);
            put_error(&mut self.output, echo, Status::AuthError);
        }
    }

    /// A get of one key: served here (after a read barrier where one is
    /// needed) or by the leader, like a text get.
    async fn binary_get(&mut self, echo: Echo, key: Bytes, raw: Bytes) {
        match self.read_at(Some(&key)).await {
            ReadAt::Leader => {
                let then = Then::Write {
                    kind: WriteKind::Get,
                    render: Render::Binary(binary::Render { echo, key }),
                    noreply: false,
                };
                self.forward(raw, Framing::Binary, false, true, then).await;
                self.bound_pending_values().await;
            }
            ReadAt::Refused(line) => {
                let (status, text) = Status::of_error_line(line);
                put_error_text(&mut self.output, echo, status, text);
            }
            ReadAt::Here => {
                self.look_up(
                    std::slice::from_ref(&key),
                    Reading::Read,
                    |out, key, item, _| match item {
                        Some(item) => {
                            put_hit(out, echo, key, item.flags(), item.data(), item.cas())
                        }
                        None => put_miss(out, echo, key),
                    },
                );
                if let Backend::Cluster(cluster) = &self.backend {
                    Stats::bump(&cluster.view.reads_local);
                }
            }
        }
    }

    /// Values of queued reads wait in their replies: at most about one
    /// multi-get piece's worth before they go out.
    async fn bound_pending_values(&mut self) {
        self.pending_hit_keys += 1;
        if self.pending_hit_keys >= self.keys_per_piece() {
            self.finish_pending().await;
            self.flush_output().await;
        }
    }

    /// Stat: one packet per statistic, then an empty one; the groups the
    /// text `stats` has, and `Not found` for any other key, as memcached.
    async fn binary_stats(&mut self, echo: Echo, group: &[u8]) {
        let group = match group {
            b"" => StatsGroup::General,
            b"settings" => StatsGroup::Settings,
            b"items" => StatsGroup::Items,
            b"slabs" => StatsGroup::Slabs,
            b"sizes" => StatsGroup::Sizes,
            b"conns" => StatsGroup::Conns,
            b"reset" => StatsGroup::Reset,
            _ => {
                self.finish_pending().await;
                put_error(&mut self.output, echo, Status::KeyNotFound);
                return;
            }
        };
        let reply = self.stats_reply(group);
        self.finish_pending().await;
        if let Reply::Stats(lines) = reply {
            for (name, value) in lines {
                put_stat(&mut self.output, echo, name.as_bytes(), value.as_bytes());
            }
        }
        put_stat(&mut self.output, echo, b"", b"");
    }

    /// Hands a forwarded binary request's reply to the client under its own
    /// opcode's quiet rules, counting it from its status.
    pub(super) fn relay_binary(
        &mut self,
        kind: WriteKind,
        render: &binary::Render,
        relayed: Relayed,
    ) {
        let echo = render.echo;
        match relayed {
            Relayed::Reply(reply) => {
                let status = response_status(&reply);
                if let Some(counted) = Counted::from_binary_status(kind, status) {
                    self.count(kind, counted);
                }
                if !suppressed(echo.opcode, status) {
                    let at = self.output.len();
                    self.output.extend_from_slice(&reply);
                    // The leader answered the loud form.
                    self.output[at + 1] = echo.opcode;
                }
            }
            Relayed::Failed(line) => {
                let (status, text) = Status::of_error_line(line);
                put_error_text(&mut self.output, echo, status, text);
            }
        }
    }
}
