//! The binary protocol: a seeded random stream of binary requests sent to
//! the system memcached and to our server, every response packet compared
//! (differential); the malformed packets after which both close; and the
//! protocol through a follower of a 3-server cluster (reads served there,
//! writes forwarded, quiet opcodes kept quiet).
//!
//! The differential stream covers every opcode memcached 1.6 serves, quiet
//! forms included: stores with real, stale and bogus CAS uniques (in set,
//! add, replace, append, prepend, delete, increment), increments that
//! create, that must not create and that find a non-numeric value, touch
//! and the four GATs, flush, noop, version, stat with an unknown group,
//! unknown opcodes, and too-large values. Each step is followed by a noop,
//! whose response ends the step's responses. CAS uniques are compared by
//! relation (each side's in order of first appearance), version bodies are
//! not compared, and memcached's space padding of a counter that got
//! shorter is removed (as tests/differential.rs does; nothing is appended
//! to such a counter, see [`Gen::counters`]). Left out: delayed
//! flushes and short exptimes (time-dependent), and unknown opcodes with a
//! body (memcached skips the body counted from after the key, eating part
//! of the next request).
//!
//! `STORE_DIFF_SEED=<u64>` replays a run.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use common::cluster;
use common::*;
use data::protocol::binary::{opcode, parse_response, put_request, Response, ARITH_NO_CREATE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Opaque of the noop that ends each step.
const STEP_END: u32 = 0xffff_ffff;
const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];
/// Over memcached's default item size (1 MiB) and ours.
const TOO_LARGE_BYTES: usize = 2 * 1024 * 1024;
const UNKNOWN_OPCODE: u8 = 0x1b;
/// A unique neither server hands out in a run.
const BOGUS_UNIQUE: u64 = 0x7777_0000_0000;
const STATUS_NOT_FOUND: u16 = 0x01;
const STATUS_EXISTS: u16 = 0x02;
const STATUS_INVALID: u16 = 0x04;

fn packet(op: u8, opaque: u32, cas: u64, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_request(&mut out, op, opaque, cas, extras, key, value);
    out.to_vec()
}

fn store_extras(flags: u32, exptime: u32) -> Vec<u8> {
    [flags.to_be_bytes(), exptime.to_be_bytes()].concat()
}

fn arith_extras(delta: u64, initial: u64, exptime: u32) -> Vec<u8> {
    [
        delta.to_be_bytes().as_slice(),
        &initial.to_be_bytes(),
        &exptime.to_be_bytes(),
    ]
    .concat()
}

/// Reads one response packet.
fn read_packet(conn: &mut Conn) -> Result<Response, String> {
    let header = conn
        .read_n(24, REPLY_TIMEOUT)
        .map_err(|got| format!("no response header; got {}", esc(&got)))?;
    let body_len = u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
    let body = conn
        .read_n(body_len, REPLY_TIMEOUT)
        .map_err(|got| format!("response body incomplete; got {}", esc(&got)))?;
    let bytes = [header, body].concat();
    match parse_response(&bytes) {
        Ok(Some((response, _))) => Ok(response),
        other => Err(format!(
            "not a response packet ({other:?}): {}",
            esc(&bytes)
        )),
    }
}

/// Sends `packets` then a noop; the responses before the noop's.
fn exchange(conn: &mut Conn, packets: &[Vec<u8>]) -> Result<Vec<Response>, String> {
    let mut bytes = packets.concat();
    bytes.extend(packet(opcode::NOOP, STEP_END, 0, &[], &[], &[]));
    conn.send(&bytes);
    let mut responses = Vec::new();
    loop {
        let response = read_packet(conn)?;
        if response.opcode == opcode::NOOP && response.opaque == STEP_END {
            return Ok(responses);
        }
        responses.push(response);
    }
}

/// Which CAS unique a request names.
#[derive(Clone, Copy, Debug)]
enum Unique {
    None,
    /// The last one this side saw for the key.
    Latest,
    Bogus,
}

/// One request, before each side fills in its own uniques.
#[derive(Clone)]
struct Request {
    op: u8,
    opaque: u32,
    unique: Unique,
    key: &'static str,
    extras: Vec<u8>,
    value: Vec<u8>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{{op {:#04x} opaque {} {:?} key {} extras {}",
            self.op,
            self.opaque,
            self.unique,
            self.key,
            esc(&self.extras)
        )?;
        match self.value.len() {
            0..=64 => write!(f, " value {}}}", esc(&self.value)),
            n => write!(f, " value of {n} bytes}}"),
        }
    }
}

/// One server and the uniques it handed out.
struct Side {
    conn: Conn,
    latest: HashMap<&'static str, u64>,
    order: HashMap<u64, usize>,
}

impl Side {
    fn new(conn: Conn) -> Side {
        Side {
            conn,
            latest: HashMap::new(),
            order: HashMap::new(),
        }
    }

    fn step(&mut self, requests: &[Request]) -> Result<Vec<String>, String> {
        let packets: Vec<Vec<u8>> = requests
            .iter()
            .map(|r| {
                let cas = match r.unique {
                    Unique::None => 0,
                    Unique::Latest => self.latest.get(r.key).copied().unwrap_or(BOGUS_UNIQUE),
                    Unique::Bogus => BOGUS_UNIQUE,
                };
                packet(r.op, r.opaque, cas, &r.extras, r.key.as_bytes(), &r.value)
            })
            .collect();
        let responses = exchange(&mut self.conn, &packets)?;
        let mut shown = Vec::new();
        for response in responses {
            // The request it answers, by opaque (each step's are distinct).
            let request = requests.iter().find(|r| r.opaque == response.opaque);
            if let (Some(request), true) = (request, response.cas != 0) {
                self.latest.insert(request.key, response.cas);
            }
            shown.push(self.show(response));
        }
        Ok(shown)
    }

    fn show(&mut self, mut r: Response) -> String {
        let next = self.order.len();
        let cas = match r.cas {
            0 => 0,
            cas => *self.order.entry(cas).or_insert(next) + 1,
        };
        if r.opcode == opcode::VERSION {
            r.value = bytes::Bytes::from_static(b"<version>");
        }
        // memcached pads a counter that got shorter with spaces (which an
        // append may then follow); the stream's values hold no spaces.
        let value: Vec<u8> = r.value.iter().copied().filter(|&b| b != b' ').collect();
        format!(
            "op {:#04x} status {:#x} opaque {} cas #{cas} extras {} key {} value {}",
            r.opcode,
            r.status,
            r.opaque,
            esc(&r.extras),
            esc(&r.key),
            esc(&value)
        )
    }
}

struct Gen {
    rng: StdRng,
    opaque: u32,
    /// Keys an increment or decrement may have changed since a set that
    /// cannot fail: memcached may have padded their value with spaces,
    /// which its strtoull then stops at, so that text appended to them
    /// still reads as a number there and not here. Neither is appended to.
    counters: std::collections::HashSet<&'static str>,
}

impl Gen {
    fn unique(&mut self) -> Unique {
        match self.rng.gen_range(0..10) {
            0..=5 => Unique::None,
            6..=8 => Unique::Latest,
            _ => Unique::Bogus,
        }
    }

    fn value(&mut self) -> Vec<u8> {
        match self.rng.gen_range(0..10) {
            0..=2 => self.rng.gen_range(0u64..1000).to_string().into_bytes(),
            // Below 2^63: see `Gen::delta`.
            3 => b"999999999999999999".to_vec(),
            4 => Vec::new(),
            5 => b"a\r\nb\x00\x80".to_vec(),
            _ => (0..self.rng.gen_range(1..40))
                .map(|_| self.rng.gen_range(b'a'..=b'z'))
                .collect(),
        }
    }

    /// A delta for an increment, or for a decrement (`decrement`).
    /// memcached 1.6.18 checks a value of 2^63 and above for a '-' with
    /// strchr() over the item's unterminated data, so that it reads as a
    /// number or not by the bytes after the item in memory (this stream
    /// failed so in CI). Stored values therefore stay below 2^63 (as in
    /// tests/differential.rs): increments add below 2^32, decrements may
    /// take any delta, since they stop at 0.
    fn delta(&mut self, decrement: bool) -> u64 {
        match self.rng.gen_range(0..4) {
            0 if decrement => u64::MAX,
            0 => u32::MAX.into(),
            _ => self.rng.gen_range(0..100),
        }
    }

    fn exptime(&mut self) -> u32 {
        if self.rng.gen_bool(0.7) {
            0
        } else {
            3600
        }
    }

    fn request(&mut self) -> Request {
        use opcode::*;
        self.opaque += 1;
        let key = KEYS[self.rng.gen_range(0..KEYS.len())];
        let mut request = Request {
            op: NOOP,
            opaque: self.opaque,
            unique: Unique::None,
            key,
            extras: Vec::new(),
            value: Vec::new(),
        };
        let quiet = self.rng.gen_bool(0.3);
        let pick = |loud: u8, quiet_op: u8| if quiet { quiet_op } else { loud };
        match self.rng.gen_range(0..100) {
            0..=24 => {
                request.op = [pick(SET, SETQ), pick(ADD, ADDQ), pick(REPLACE, REPLACEQ)]
                    [self.rng.gen_range(0..3)];
                request.unique = self.unique();
                let flags = self.rng.gen();
                request.extras = store_extras(flags, self.exptime());
                request.value = if self.rng.gen_ratio(1, 200) {
                    vec![b'x'; TOO_LARGE_BYTES]
                } else {
                    self.value()
                };
            }
            25..=32 if self.counters.contains(key) => request.op = GET,
            25..=32 => {
                request.op =
                    [pick(APPEND, APPENDQ), pick(PREPEND, PREPENDQ)][self.rng.gen_range(0..2)];
                request.unique = self.unique();
                request.value = self.value();
            }
            33..=52 => {
                request.op = [pick(GET, GETQ), pick(GETK, GETKQ)][self.rng.gen_range(0..2)];
            }
            53..=60 => {
                request.op = pick(DELETE, DELETEQ);
                request.unique = self.unique();
            }
            61..=74 => {
                request.op = [pick(INCREMENT, INCREMENTQ), pick(DECREMENT, DECREMENTQ)]
                    [self.rng.gen_range(0..2)];
                request.unique = self.unique();
                let decrement = data::protocol::binary::loud(request.op).0 == DECREMENT;
                let delta = self.delta(decrement);
                let exptime = match self.rng.gen_range(0..3) {
                    0 => ARITH_NO_CREATE,
                    _ => self.exptime(),
                };
                let initial = self.rng.gen_range(0..1000);
                request.extras = arith_extras(delta, initial, exptime);
                self.counters.insert(key);
            }
            75..=84 => {
                request.op = [TOUCH, pick(GAT, GATQ), pick(GATK, GATKQ)][self.rng.gen_range(0..3)];
                request.extras = self.exptime().to_be_bytes().to_vec();
            }
            85..=86 => {
                request.op = pick(FLUSH, FLUSHQ);
                request.key = "";
            }
            87..=90 => {
                request.op = VERSION;
                request.key = "";
            }
            91..=93 => {
                request.op = STAT;
                request.key = "nonesuch";
            }
            94..=95 => {
                request.op = UNKNOWN_OPCODE;
                request.key = "";
            }
            _ => request.key = "",
        }
        let loud_op = data::protocol::binary::loud(request.op).0;
        if loud_op == SET && matches!(request.unique, Unique::None) {
            self.counters.remove(key);
        }
        if loud_op == FLUSH {
            self.counters.clear();
        }
        request
    }
}

#[test]
fn binary_differential_against_memcached() {
    let test = "binary_differential_against_memcached";
    let Some(mc) = Memcached::start_or_skip(test) else {
        return;
    };
    let store = StoreServer::start(&[]);
    let seed = diff_seed("binary differential");
    let mut reference = Side::new(mc.connect());
    let mut ours = Side::new(store.connect());
    let mut gen = Gen {
        rng: StdRng::seed_from_u64(seed),
        opaque: 0,
        counters: Default::default(),
    };
    run_differential(
        "binary differential",
        seed,
        || {
            (0..gen.rng.gen_range(1..6))
                .map(|_| gen.request())
                .collect()
        },
        |requests| reference.step(requests),
        |requests| ours.step(requests),
    );
}

/// What memcached answers a malformed packet with, then closes: the same
/// bytes from both, then end of stream.
#[test]
fn malformed_packets_close_as_in_memcached() {
    let test = "malformed_packets_close_as_in_memcached";
    let Some(mc) = Memcached::start_or_skip(test) else {
        return;
    };
    let store = StoreServer::start(&[]);
    let long_key = vec![b'k'; 251];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "get with extras",
            packet(opcode::GET, 1, 0, &[0; 4], b"k", b""),
        ),
        (
            "key over 250 bytes",
            packet(opcode::GET, 2, 0, &[], &long_key, b""),
        ),
        (
            "set without extras",
            packet(opcode::SET, 3, 0, &[], b"k", b"v"),
        ),
        (
            "incr with a value",
            packet(opcode::INCREMENT, 4, 0, &arith_extras(1, 0, 0), b"k", b"v"),
        ),
    ];
    for (what, bytes) in cases {
        let mut replies = Vec::new();
        for port in [mc.port, store.port] {
            let mut conn = Conn::connect(port);
            conn.send(&bytes);
            let response = read_packet(&mut conn).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(response.status, STATUS_INVALID, "{what} on port {port}");
            conn.expect_eof(REPLY_TIMEOUT);
            replies.push(response);
        }
        assert_eq!(replies[0], replies[1], "{what}: memcached, then store");
    }
    // Not a request at all: closed without a reply by both.
    for port in [mc.port, store.port] {
        let mut conn = Conn::connect(port);
        conn.send(&packet(opcode::GET, 1, 0, &[], b"k", b"")[..]);
        read_packet(&mut conn).expect("a get answered");
        let mut bogus = packet(opcode::GET, 1, 0, &[], b"k", b"");
        bogus[0] = 0x81;
        conn.send(&bogus);
        conn.expect_eof(REPLY_TIMEOUT);
    }
}

/// Through a follower: writes forwarded to the leader, reads served there
/// after a read index, quiet opcodes answering only what memcached answers,
/// and the uniques the leader would give.
#[test]
fn binary_protocol_through_a_follower() {
    let cluster = cluster::start(3);
    let (leader, follower) = cluster::leader_and_follower(&cluster);
    let mut conn = Conn::connect(follower.port());
    let set = packet(opcode::SET, 1, 0, &store_extras(7, 0), b"a", b"alpha");
    let responses = exchange(&mut conn, &[set]).expect("set through the follower");
    assert_eq!(responses.len(), 1);
    let (stored, cas) = (&responses[0], responses[0].cas);
    assert_eq!(
        (stored.opcode, stored.status, stored.opaque),
        (opcode::SET, 0, 1)
    );
    assert_ne!(cas, 0, "a set answers the item's unique");

    // Pipelined quiet requests: only the hit and the errors answer.
    let requests = [
        packet(opcode::SETQ, 2, 0, &store_extras(0, 0), b"b", b"beta"),
        packet(opcode::GETQ, 3, 0, &[], b"missing", b""),
        packet(opcode::GETKQ, 4, 0, &[], b"b", b""),
        packet(opcode::DELETEQ, 5, cas + 1000, &[], b"a", b""),
        packet(opcode::INCREMENTQ, 6, 0, &arith_extras(5, 40, 0), b"n", b""),
        packet(
            opcode::INCREMENT,
            7,
            0,
            &arith_extras(2, 0, ARITH_NO_CREATE),
            b"n",
            b"",
        ),
        packet(opcode::GETK, 8, 0, &[], b"a", b""),
    ];
    let responses = exchange(&mut conn, &requests).expect("quiet pipeline");
    let shown: Vec<(u8, u16, u32)> = responses
        .iter()
        .map(|r| (r.opcode, r.status, r.opaque))
        .collect();
    assert_eq!(
        shown,
        vec![
            (opcode::GETKQ, 0, 4),
            (opcode::DELETEQ, STATUS_EXISTS, 5),
            (opcode::INCREMENT, 0, 7),
            (opcode::GETK, 0, 8),
        ]
    );
    assert_eq!(&responses[0].value[..], b"beta");
    assert_eq!(&responses[0].key[..], b"b");
    assert_eq!(&responses[2].value[..], &42u64.to_be_bytes());
    let hit = &responses[3];
    assert_eq!(
        (&hit.value[..], &hit.extras[..], hit.cas),
        (&b"alpha"[..], &7u32.to_be_bytes()[..], cas)
    );

    // The leader holds the same item with the same unique.
    let mut at_leader = Conn::connect(leader.port());
    let get = packet(opcode::GET, 9, 0, &[], b"a", b"");
    let responses = exchange(&mut at_leader, &[get]).expect("get at the leader");
    assert_eq!(
        (&responses[0].value[..], responses[0].cas),
        (&b"alpha"[..], cas)
    );
    let miss = packet(opcode::GET, 10, 0, &[], b"missing", b"");
    let responses = exchange(&mut conn, &[miss]).expect("miss at the follower");
    assert_eq!(
        (responses[0].status, &responses[0].value[..]),
        (STATUS_NOT_FOUND, &b"Not found"[..])
    );

    // A connection that began with text takes binary requests too (a
    // follower's forwarding lanes carry both).
    let mut mixed = Conn::connect(follower.port());
    mixed.request(b"get b\r\n", b"VALUE b 0 4\r\nbeta\r\nEND\r\n");
    let stats = server_stats_binary(&mut mixed);
    assert!(
        stats.iter().any(|(name, _)| name == "repl_reads_local"),
        "a follower's binary stat reports its reads: {stats:?}"
    );
}

/// A binary `stat`: its packets up to the empty one.
fn server_stats_binary(conn: &mut Conn) -> Vec<(String, String)> {
    conn.send(&packet(opcode::STAT, 77, 0, &[], b"", b""));
    let mut stats = Vec::new();
    loop {
        let response = read_packet(conn).expect("stat packet");
        assert_eq!((response.opcode, response.opaque), (opcode::STAT, 77));
        if response.key.is_empty() {
            return stats;
        }
        stats.push((
            String::from_utf8_lossy(&response.key).into_owned(),
            String::from_utf8_lossy(&response.value).into_owned(),
        ));
    }
}
