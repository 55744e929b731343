//! Admin and introspection commands (issue 13, Deliver 4 and 5), against
//! Debian's memcached byte for byte: memcached's tools send them, and a
//! plain `ERROR` where memcached answers makes memcached-tool hang or fail.
//! Then the tools themselves, on a single server and on a follower:
//! memcached-tool display|stats|settings|dump, memcstat, memcdump, memcflush.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::cluster;
use common::*;

/// Commands whose reply does not depend on the server's state, sent to
/// fresh servers in this order.
const SAME_REPLY: &[&[u8]] = &[
    b"stats cachedump 1 10\r\n",
    b"stats cachedump 1\r\n",
    b"stats cachedump\r\n",
    b"stats cachedump x y\r\n",
    b"lru_crawler metadump all\r\n",
    b"lru_crawler metadump\r\n",
    b"stats detail on\r\n",
    b"stats detail off\r\n",
    b"stats detail dump\r\n",
    b"stats detail\r\n",
    b"stats detail x\r\n",
    b"shutdown\r\n",
    b"shutdown graceful\r\n",
    b"lru_crawler sleep 100\r\n",
    b"lru_crawler sleep 2000000\r\n",
    b"lru_crawler sleep x\r\n",
    b"lru_crawler tocrawl 100\r\n",
    b"lru_crawler tocrawl x\r\n",
    b"lru_crawler foo\r\n",
    b"lru_crawler\r\n",
    b"slabs reassign 1 2\r\n",
    b"slabs reassign 1 1\r\n",
    b"slabs automove 1\r\n",
    b"slabs automove 9\r\n",
    b"slabs foo\r\n",
    b"slabs\r\n",
    b"cache_memlimit 4\r\n",
    b"cache_memlimit 2000000000\r\n",
    b"cache_memlimit 100\r\n",
];

/// How long one tool run may take (a hang is the failure this catches).
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// The reply to `lru_crawler metadump all`, read to its END as
/// memcached-tool does: memcached's crawler owns the connection until the
/// dump ends and drops a request pipelined behind it.
fn dump_reply(conn: &mut Conn) -> Vec<u8> {
    conn.send(b"lru_crawler metadump all\r\n");
    conn.read_until(b"END\r\n", Duration::from_secs(10))
        .unwrap_or_else(|p| panic!("metadump cut: {}", esc(&p)))
}

/// `lru_crawler metadump all` as key -> exp.
fn metadump(conn: &mut Conn) -> BTreeMap<String, i64> {
    let text = String::from_utf8(dump_reply(conn)).expect("ascii");
    assert!(text.ends_with("END\r\n"), "{text:?}");
    text.lines()
        .filter(|l| l.starts_with("key="))
        .map(|l| {
            let fields: BTreeMap<&str, &str> =
                l.split(' ').filter_map(|f| f.split_once('=')).collect();
            for name in ["la", "cas", "fetch", "cls", "size"] {
                assert!(fields.contains_key(name), "{name} in {l:?}");
            }
            (
                fields["key"].to_string(),
                fields["exp"].parse().expect("exp is a number"),
            )
        })
        .collect()
}

#[test]
fn admin_commands_answer_as_memcached_does() {
    if target() != Target::Store {
        return skip("admin_commands", "compares the store with memcached");
    }
    let Some(memcached) = Memcached::start_or_skip("admin_commands") else {
        return;
    };
    let store = StoreServer::start(&[]);
    let mut theirs = memcached.connect();
    let mut ours = store.connect();
    for request in SAME_REPLY {
        let (want, got) = if request.starts_with(b"lru_crawler metadump ") {
            (dump_reply(&mut theirs), dump_reply(&mut ours))
        } else {
            (reply_to(&mut theirs, request), reply_to(&mut ours, request))
        };
        assert_eq!(
            esc(&got),
            esc(&want),
            "reply to {} differs from memcached's",
            esc(request)
        );
    }
    // version: three numbers, the protocol level this server follows.
    ours.send(b"version\r\n");
    assert_eq!(ours.read_line(), b"VERSION 1.6.45\r\n");
    let stats = cluster::server_stats(addr_of(&store));
    assert_eq!(stats.get("version").map(String::as_str), Some("1.6.45"));
    assert!(stats.contains_key("store_version"), "{stats:?}");

    // metadump lists the same keys with the same expiry (uri-encoded keys,
    // -1 for none); an expiring item's time may differ by the second.
    let expires = 1_900_000_000u64;
    for conn in [&mut theirs, &mut ours] {
        conn.request(b"set plain 1 0 1\r\nx\r\n", b"STORED\r\n");
        conn.request(b"set odd%key 2 0 1\r\ny\r\n", b"STORED\r\n");
        conn.request(
            format!("set timed 3 {expires} 1\r\nz\r\n").as_bytes(),
            b"STORED\r\n",
        );
        conn.request(b"set gone 0 0 1\r\nw\r\n", b"STORED\r\n");
        conn.request(b"delete gone\r\n", b"DELETED\r\n");
    }
    let want = metadump(&mut theirs);
    let got = metadump(&mut ours);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert_eq!(got["plain"], -1);
    assert_eq!(got["odd%25key"], -1);
    assert!(
        (got["timed"] - want["timed"]).abs() <= 1,
        "{got:?} {want:?}"
    );
}

#[test]
fn shutdown_stops_the_server_when_enabled() {
    if target() != Target::Store {
        return skip("shutdown", "store flags");
    }
    let mut store = StoreServer::start(&["-A"]);
    let mut conn = store.connect();
    conn.request(b"set k 0 0 1\r\nv\r\n", b"STORED\r\n");
    conn.request(
        b"shutdown now\r\n",
        b"CLIENT_ERROR invalid shutdown mode\r\n",
    );
    conn.send(b"shutdown\r\n");
    conn.expect_eof(Duration::from_secs(10));
    let status = store
        .proc
        .as_mut()
        .and_then(|p| p.wait_exit(Duration::from_secs(10)))
        .expect("the server exits after shutdown");
    assert!(status.success(), "{status:?}");
    // What was acknowledged is still there.
    store.restart();
    store
        .connect()
        .request(b"get k\r\n", b"VALUE k 0 1\r\nv\r\nEND\r\n");
}

/// Runs every tool against `addr` (which holds `k1` = "hello", flags 5);
/// `flush` runs memcflush last.
fn run_tools(addr: SocketAddr) {
    let port = addr.port().to_string();
    let server = format!("127.0.0.1:{port}");
    let Some((perl, script)) = memcached_tool() else {
        return skip(
            "memcached-tool",
            "perl and memcached-tool (memcached package)",
        );
    };
    for mode in ["display", "stats", "settings", "dump"] {
        let mut cmd = Command::new(&perl);
        cmd.arg(&script).arg(&server).arg(mode);
        let run = run_tool(cmd, TOOL_TIMEOUT);
        assert!(
            run.status.success(),
            "memcached-tool {mode}: {}",
            run.stderr
        );
        match mode {
            "stats" => assert!(run.stdout.contains("curr_items"), "{}", run.stdout),
            "settings" => assert!(run.stdout.contains("maxbytes"), "{}", run.stdout),
            "dump" => assert!(
                run.stdout.contains("add k1 5 0 5\r\nhello\r\n"),
                "dump: {:?}",
                run.stdout
            ),
            _ => {}
        }
    }
    let servers = format!("--servers={server}");
    for name in ["memcstat", "memcdump", "memcflush"] {
        let Some(bin) = libmemcached_tool(name) else {
            return skip(name, "libmemcached-tools");
        };
        let mut cmd = Command::new(bin);
        cmd.arg(&servers);
        let run = run_tool(cmd, TOOL_TIMEOUT);
        assert!(
            run.status.success(),
            "{name}: {} {}",
            run.stdout,
            run.stderr
        );
        if name == "memcstat" {
            assert!(run.stdout.contains("curr_items"), "{}", run.stdout);
        }
    }
    // memcflush emptied the store.
    Conn::connect(addr.port()).request(b"get k1\r\n", b"END\r\n");
}

#[test]
fn memcacheds_tools_work_against_a_server() {
    if target() != Target::Store {
        return skip("memcached tools", "runs against the store");
    }
    let store = StoreServer::start(&[]);
    store
        .connect()
        .request(b"set k1 5 0 5\r\nhello\r\n", b"STORED\r\n");
    run_tools(addr_of(&store));
}

#[test]
fn memcacheds_tools_work_against_a_follower() {
    let cluster = cluster::start(3);
    let (_, follower, other) = cluster::leader_and_followers(&cluster);
    // A dump waits for the read barrier a get waits for: a write
    // acknowledged through one follower is in the other's dump at once.
    Conn::connect(other.port()).request(b"set k1 5 0 5\r\nhello\r\n", b"STORED\r\n");
    let dump = dump_reply(&mut Conn::connect(follower.port()));
    assert!(
        dump.windows(6).any(|w| w == b"key=k1"),
        "the dump right after the write: {}",
        esc(&dump)
    );
    run_tools(follower);
}
