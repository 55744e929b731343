//! Every server counts what it received (issue 13, Deliver 3): requests sent
//! to a follower show in the follower's `stats`, forwarded or not, and the
//! leader does not count them again, so the counters summed over the
//! servers count each request once, as dashboards that scrape every
//! memcached server expect.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::cluster::{self, server_stats};
use common::*;

/// The counters a request moves, per server, as memcached names them.
const COUNTERS: &[&str] = &[
    "cmd_get",
    "get_hits",
    "get_misses",
    "cmd_set",
    "cmd_touch",
    "cmd_flush",
    "delete_hits",
    "delete_misses",
    "incr_hits",
    "incr_misses",
    "decr_hits",
    "cas_hits",
    "cas_badval",
    "touch_hits",
    "touch_misses",
    "total_items",
];

fn counters(addr: SocketAddr) -> BTreeMap<&'static str, u64> {
    let stats = server_stats(addr);
    COUNTERS
        .iter()
        .map(|name| (*name, stat_u64(&stats, name)))
        .collect()
}

fn delta(
    before: &BTreeMap<&'static str, u64>,
    after: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    COUNTERS
        .iter()
        .map(|name| (*name, after[name] - before[name]))
        .filter(|(_, d)| *d > 0)
        .collect()
}

#[test]
fn a_follower_counts_what_it_received_and_the_leader_does_not_count_it_again() {
    let cluster = cluster::start(3);
    let (leader, follower) = cluster::leader_and_follower(&cluster);
    let before: Vec<_> = cluster.servers.iter().map(|s| counters(*s)).collect();

    let mut conn = Conn::connect(follower.port());
    conn.request(b"set a 0 0 1\r\n1\r\n", b"STORED\r\n");
    conn.request(b"get a nope\r\n", b"VALUE a 0 1\r\n1\r\nEND\r\n");
    conn.request(b"incr a 5\r\n", b"6\r\n");
    conn.request(b"incr nope 5\r\n", b"NOT_FOUND\r\n");
    conn.request(b"decr a 1\r\n", b"5\r\n");
    conn.request(b"touch a 0\r\n", b"TOUCHED\r\n");
    conn.request(b"touch nope 0\r\n", b"NOT_FOUND\r\n");
    conn.request(b"gat 0 a nope\r\n", b"VALUE a 0 1\r\n5\r\nEND\r\n");
    let unique = gets_unique(&mut conn, "a");
    conn.request(
        format!("cas a 0 0 1 {unique}\r\n7\r\n").as_bytes(),
        b"STORED\r\n",
    );
    conn.request(
        format!("cas a 0 0 1 {unique}\r\n8\r\n").as_bytes(),
        b"EXISTS\r\n",
    );
    // noreply: the follower never sees the outcome, so the leader counts it.
    conn.send(b"delete a noreply\r\n");
    conn.request(b"delete a\r\n", b"NOT_FOUND\r\n");
    conn.request(b"flush_all\r\n", b"OK\r\n");

    let after: Vec<_> = cluster.servers.iter().map(|s| counters(*s)).collect();
    let deltas: Vec<_> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| delta(b, a))
        .collect();
    let at = |addr: SocketAddr| {
        let i = cluster
            .servers
            .iter()
            .position(|s| *s == addr)
            .expect("a server");
        deltas[i].clone()
    };
    let want_follower: BTreeMap<&str, u64> = [
        ("cmd_get", 3), // get a nope, gets a
        ("get_hits", 2),
        ("get_misses", 1),
        ("cmd_set", 3),   // set, two cas
        ("cmd_touch", 4), // two touches, gat of two keys
        ("cmd_flush", 1),
        ("delete_misses", 1),
        ("incr_hits", 1),
        ("incr_misses", 1),
        ("decr_hits", 1),
        ("cas_hits", 1),
        ("cas_badval", 1),
        ("touch_hits", 2), // touch a, gat a
        ("touch_misses", 2),
        ("total_items", 4), // set, incr, decr, cas
    ]
    .into_iter()
    .collect();
    assert_eq!(at(follower), want_follower, "follower");
    // The one noreply delete, whose outcome only the leader saw.
    let want_leader: BTreeMap<&str, u64> = [("delete_hits", 1)].into_iter().collect();
    assert_eq!(at(leader), want_leader, "leader");
    let other = *cluster
        .servers
        .iter()
        .find(|s| **s != leader && **s != follower)
        .expect("three servers");
    assert_eq!(at(other), BTreeMap::new(), "the other follower");
}

/// Reads on a follower (issue 17): served from the follower's own state
/// after the leader's read index, each a write the same client just made
/// through that follower (read-your-writes through a forwarded write), and
/// counted in the follower's `repl_` lines: keys served here, read-index
/// questions and the reads they served, requests forwarded.
#[test]
fn a_follower_serves_reads_itself_and_counts_its_read_index_exchanges() {
    let cluster = cluster::start(3);
    let (leader, follower) = cluster::leader_and_follower(&cluster);
    let repl = |addr: SocketAddr, name: &str| stat_u64(&server_stats(addr), name);
    let leader_reads_before = repl(leader, "repl_reads_local");

    let mut conn = Conn::connect(follower.port());
    const ROUNDS: u64 = 20;
    for i in 0..ROUNDS {
        conn.request(
            format!("set k 0 0 2\r\n{i:02}\r\n").as_bytes(),
            b"STORED\r\n",
        );
        conn.request(
            b"get k\r\n",
            format!("VALUE k 0 2\r\n{i:02}\r\nEND\r\n").as_bytes(),
        );
    }
    // A pipeline of gets shares its barrier.
    conn.send(b"get k\r\nget k\r\nget k\r\nget k\r\n");
    let reply = conn
        .read_until(b"END\r\nVALUE k 0 2\r\n19\r\nEND\r\nVALUE k 0 2\r\n19\r\nEND\r\nVALUE k 0 2\r\n19\r\nEND\r\n", std::time::Duration::from_secs(5))
        .unwrap_or_else(|p| panic!("{}", esc(&p)));
    assert!(
        reply.starts_with(b"VALUE k 0 2\r\n19\r\n"),
        "{}",
        esc(&reply)
    );

    let reads_local = repl(follower, "repl_reads_local");
    let questions = repl(follower, "repl_read_index_questions");
    let answered = repl(follower, "repl_read_index_reads");
    assert_eq!(reads_local, ROUNDS + 4, "every get served on the follower");
    assert!(questions >= 1, "the follower asked the leader");
    // One read per batch of gets the connection had (the pipelined four
    // share one unless TCP split them).
    assert!(
        (1..=ROUNDS + 4).contains(&answered),
        "reads served by answers: {answered}"
    );
    assert!(
        repl(follower, "repl_requests_forwarded") >= ROUNDS,
        "the sets went to the leader"
    );
    assert_eq!(
        repl(leader, "repl_reads_local"),
        leader_reads_before,
        "the leader served none of these gets"
    );
    // The figures are there to read even when nothing waited.
    let stats = server_stats(follower);
    for name in ["repl_reads_waited_for_apply", "repl_read_apply_wait_ms"] {
        assert!(stats.contains_key(name), "{name} in stats");
    }
}
