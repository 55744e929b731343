//! `stats` and `lru_crawler metadump`: what a connection reports of the
//! server and its items.

use super::*;
use crate::access::Accessed;

/// Table buckets one step of `lru_crawler metadump` walks under the state
/// lock (about 100 KiB of lines at a time for small items).
pub(super) const METADUMP_BUCKETS_PER_STEP: usize = 1024;

/// Appends one `lru_crawler metadump` line for `item`, whose reads on
/// this server `seen` tells (best effort, [`crate::access`]).
pub(super) fn metadump_line(out: &mut BytesMut, item: &ItemRef<'_>, seen: Accessed) {
    use std::fmt::Write as _;
    out.extend_from_slice(b"key=");
    for &b in item.key() {
        // memcached's uriencode: unreserved characters as they are.
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.extend_from_slice(&[b]);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    let exp = match item.exptime() {
        exptime::NEVER => -1,
        at => i64::try_from(at).unwrap_or(i64::MAX),
    };
    let size = item_cost_bytes(item.key().len(), item.data().len());
    // memcached ends these lines with a bare newline (and END with \r\n).
    let _ = writeln!(
        out,
        " exp={exp} la={} cas={} fetch={} cls=1 size={size}",
        seen.last_access_s(item.updated_s()),
        item.cas(),
        if seen.fetched { "yes" } else { "no" },
    );
}

impl Connection {
    pub(super) fn stats_reply(&self, group: StatsGroup) -> Reply {
        let stats = &self.shared.stats;
        match group {
            StatsGroup::General => {
                let figures = {
                    let state = state::read(&self.shared.state);
                    StateFigures {
                        curr_items: state.len() as u64,
                        bytes: state.bytes(),
                        applied_index: state.applied_index(),
                        reclaimed: state.reclaimed(),
                        memory_bytes: state.memory_bytes(),
                    }
                };
                let config = &self.shared.config;
                let settings = GeneralSettings {
                    connections_max: config.connections_max,
                    threads: config.threads,
                    limit_bytes: self.shared.memory.limit_bytes(),
                };
                let mut lines = stats.general(settings, figures);
                if let Some(tls) = &self.shared.tls {
                    let count = |n: &std::sync::atomic::AtomicU64| {
                        n.load(std::sync::atomic::Ordering::Relaxed).to_string()
                    };
                    lines.extend([
                        ("ssl_handshake_errors".into(), count(&tls.handshake_errors)),
                        ("ssl_new_sessions".into(), count(&tls.new_sessions)),
                        (
                            "time_since_server_cert_refresh".into(),
                            tls.seconds_since_refresh().to_string(),
                        ),
                    ]);
                }
                if let Backend::Cluster(cluster) = &self.backend {
                    lines.extend(cluster.view.report(cluster.read_mode));
                    // The limit this server checks writes against: on the
                    // leader the smallest in its group (see memory.rs).
                    lines.push((
                        "repl_group_limit_maxbytes".into(),
                        self.shared.memory.effective_limit_bytes().to_string(),
                    ));
                }
                Reply::Stats(lines)
            }
            StatsGroup::Settings => Reply::Stats(
                self.shared
                    .config
                    .stats_settings(self.shared.memory.limit_bytes()),
            ),
            StatsGroup::Reset => {
                stats.reset();
                Reply::Reset
            }
            // memcached's slab and connection internals have no equivalent
            // here: answer with an empty group, which every client accepts.
            StatsGroup::Items
            | StatsGroup::Slabs
            | StatsGroup::Sizes
            | StatsGroup::Conns
            | StatsGroup::CacheDump => Reply::Stats(Vec::new()),
        }
    }

    /// `lru_crawler metadump`: a line per visible item of this server's
    /// state, as memcached's (`key=<uri-encoded> exp=<-1 or unix time>
    /// la=<last access> cas=<unique> fetch=<yes|no> cls=1 size=<record
    /// bytes>`, the access as this server saw it),
    /// then `END`. The table is walked a bounded step at a time, the lines
    /// written out between steps, so a large state streams; like memcached's
    /// crawler it is not a snapshot (a write between steps may or may not
    /// show). Served by any server from its own applied state, after the
    /// read barrier a get waits for: every write acknowledged before the
    /// request came (through any server) is listed.
    pub(super) async fn metadump(&mut self) {
        let mut cursor = 0;
        loop {
            {
                let state = state::read(&self.shared.state);
                let output = &mut self.output;
                let access = &self.shared.access;
                cursor = state.scan(cursor, METADUMP_BUCKETS_PER_STEP, |item| {
                    if state.is_visible(&item) {
                        metadump_line(output, &item, access.peek(item.key(), item.cas()));
                    }
                    true
                });
            }
            if cursor == 0 {
                break;
            }
            if self.output.len() >= OUTPUT_BYTES_FLUSH {
                self.flush_output().await;
                if self.broken {
                    return;
                }
            }
        }
        Reply::End.encode(&mut self.output);
    }
}
