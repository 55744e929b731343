//! Replies larger than a connection may buffer (issue 13, Deliver 2): a
//! multi-get or gat of many large values is served a piece at a time, each
//! piece written out before the next is read, so the reply is exact (every
//! value in order, one `END`) and the server's memory does not grow with
//! it. On a follower each piece is forwarded on its own.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cluster;
use common::*;

/// `-I 8m`: a piece holds 64 MiB / 8 MiB = 8 keys, so 40 keys are 5 pieces.
const ITEM_LIMIT: &str = "8m";
const KEYS: usize = 40;
const VALUE_BYTES: usize = 1024 * 1024;
/// A get naming one 1 MiB key this many times: a 512 MiB reply.
const REPEATS: usize = 512;
/// What the server may reach at its peak while sending that reply: the
/// values it holds (40 MiB), a piece (64 MiB), and its own needs.
const PEAK_RSS_MAX_BYTES: u64 = 256 * 1024 * 1024;

fn value_of(i: usize) -> Vec<u8> {
    vec![b'a' + (i % 26) as u8; VALUE_BYTES]
}

fn store_values(addr: SocketAddr) {
    let mut conn = Conn::connect(addr.port());
    for i in 0..KEYS {
        let mut request = format!("set big{i} {i} 0 {VALUE_BYTES}\r\n").into_bytes();
        request.extend_from_slice(&value_of(i));
        request.extend_from_slice(b"\r\n");
        conn.request(&request, b"STORED\r\n");
    }
}

/// The exact reply to a retrieval of `big0..big{KEYS}` (without CAS).
fn expected_values() -> Vec<u8> {
    let mut want = Vec::new();
    for i in 0..KEYS {
        want.extend_from_slice(format!("VALUE big{i} {i} {VALUE_BYTES}\r\n").as_bytes());
        want.extend_from_slice(&value_of(i));
        want.extend_from_slice(b"\r\n");
    }
    want.extend_from_slice(b"END\r\n");
    want
}

fn all_keys() -> String {
    (0..KEYS).map(|i| format!(" big{i}")).collect()
}

/// get and gat of every key, at `addr`, answer every value in order.
fn check_many_keys(addr: SocketAddr) {
    let mut conn = Conn::connect(addr.port());
    let want = expected_values();
    conn.send(format!("get{}\r\n", all_keys()).as_bytes());
    let got = conn
        .read_n(want.len(), Duration::from_secs(30))
        .unwrap_or_else(|p| panic!("get reply cut at {} bytes", p.len()));
    assert!(got == want, "get reply differs from the values stored");
    conn.send(format!("gat 0{}\r\n", all_keys()).as_bytes());
    let got = conn
        .read_n(want.len(), Duration::from_secs(30))
        .unwrap_or_else(|p| panic!("gat reply cut at {} bytes", p.len()));
    assert!(got == want, "gat reply differs from the values stored");
    // Nothing follows: the next request's reply comes next.
    conn.request(b"version\r\n", b"VERSION ");
}

#[test]
fn a_get_of_many_large_values_is_exact_and_memory_stays_flat() {
    if target() != Target::Store {
        return skip("large_replies", "piece sizes are the store's");
    }
    let server = StoreServer::start(&["-I", ITEM_LIMIT]);
    let addr = addr_of(&server);
    store_values(addr);
    check_many_keys(addr);

    let mut conn = Conn::connect(server.port);
    let line = format!("get{}\r\n", " big0".repeat(REPEATS));
    conn.send(line.as_bytes());
    let block = format!("VALUE big0 0 {VALUE_BYTES}\r\n").len() + VALUE_BYTES + 2;
    let total = REPEATS * block + b"END\r\n".len();
    let got = conn
        .read_n(total, Duration::from_secs(60))
        .unwrap_or_else(|p| panic!("reply cut at {} of {total} bytes", p.len()));
    assert!(got.ends_with(b"END\r\n"));
    let peak = peak_rss_bytes(pid_of(&server));
    println!(
        "a {:.0} MiB get reply: server peak RSS {:.1} MiB",
        mib(total as u64),
        mib(peak)
    );
    assert!(
        peak <= PEAK_RSS_MAX_BYTES,
        "peak RSS {:.1} MiB while sending a {:.0} MiB reply",
        mib(peak),
        mib(total as u64)
    );
}

#[test]
fn a_follower_forwards_a_large_get_a_piece_at_a_time() {
    let cluster = cluster::start_with(3, &["-I", ITEM_LIMIT]);
    let (leader, follower) = cluster::leader_and_follower(&cluster);
    store_values(leader);
    check_many_keys(follower);
}
