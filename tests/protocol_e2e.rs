//! The exact-bytes checklist of /work/shared/memcached-protocol.md that users
//! rely on, against a real `store addsrv` process: raw bytes in, exact bytes
//! out. Where memcached 1.6.18 and 1.6.45 differ, we assert our documented
//! behaviour (1.6.45's, with the strict `delete` of §1.16); with
//! `STORE_E2E_TARGET=memcached` the same tests run against memcached 1.6.18
//! and expect its answers there (see `ours_or_1618`), which is how the tests
//! themselves were checked.
//!
//! Also: durability across SIGTERM and restart, and `-c` max connections.

mod common;

use common::*;
use std::time::Duration;

const EOF_TIMEOUT: Duration = Duration::from_secs(5);

fn start() -> StoreServer {
    StoreServer::start(&[])
}

/// Our documented reply, or memcached 1.6.18's where §1.16 makes them differ.
fn ours_or_1618<'a>(ours: &'a [u8], mc1618: &'a [u8]) -> &'a [u8] {
    match target() {
        Target::Store => ours,
        Target::Memcached => mc1618,
    }
}

/// Reads one line and asserts it is an error reply (`ERROR` or `CLIENT_ERROR ...`).
#[track_caller]
fn expect_error_line(conn: &mut Conn) -> Vec<u8> {
    let line = conn.read_line();
    assert!(
        line == b"ERROR\r\n" || (line.starts_with(b"CLIENT_ERROR ") && line.ends_with(b"\r\n")),
        "expected an error line, got {}",
        esc(&line)
    );
    line
}

#[test]
fn framing_bare_newline_and_crlf_inside_data() {
    let s = start();
    let mut c = s.connect();
    c.request(b"get a\n", b"END\r\n");
    c.request(b"set b 0 0 4\r\n\r\n\r\n\r\n", b"STORED\r\n");
    c.request(b"get b\r\n", b"VALUE b 0 4\r\n\r\n\r\n\r\nEND\r\n");
    // A bare \n also ends a storage command line.
    c.request(
        b"set c 5 0 2\nhi\r\nget c\n",
        b"STORED\r\nVALUE c 5 2\r\nhi\r\nEND\r\n",
    );
}

#[test]
fn tokens_runs_of_spaces_control_bytes_and_utf8_keys() {
    let s = start();
    let mut c = s.connect();
    c.request(b"set  ms   0  0  1\r\nx\r\n", b"STORED\r\n");
    c.request(b"get   ms  \r\n", b"VALUE ms 0 1\r\nx\r\nEND\r\n");
    // Tab and other control bytes are part of the key, not separators.
    c.request(b"set k\ty 0 0 1\r\nt\r\n", b"STORED\r\n");
    c.request(b"set k\x01y 0 0 1\r\nu\r\n", b"STORED\r\n");
    c.request(
        b"get k\ty k\x01y k\r\n",
        b"VALUE k\ty 0 1\r\nt\r\nVALUE k\x01y 0 1\r\nu\r\nEND\r\n",
    );
    let key = "ключ-🔑".as_bytes();
    let mut set = b"set ".to_vec();
    set.extend_from_slice(key);
    set.extend_from_slice(b" 3 0 2\r\nok\r\n");
    c.request(&set, b"STORED\r\n");
    let mut get = b"get ".to_vec();
    get.extend_from_slice(key);
    get.extend_from_slice(b"\r\n");
    let mut want = b"VALUE ".to_vec();
    want.extend_from_slice(key);
    want.extend_from_slice(b" 3 2\r\nok\r\nEND\r\n");
    c.request(&get, &want);
}

#[test]
fn commands_are_case_sensitive_and_unknown_is_error() {
    let s = start();
    let mut c = s.connect();
    c.request(b"GET a\r\n", b"ERROR\r\n");
    c.request(b"Version\r\n", b"ERROR\r\n");
    c.request(b"bogus\r\n", b"ERROR\r\n");
    // The data line of an unrecognised storage command is parsed as a command.
    c.request(b"SET a 0 0 1\r\nx\r\n", b"ERROR\r\nERROR\r\n");
    // Errors keep the connection open.
    c.request(b"get a\r\n", b"END\r\n");
}

#[test]
fn http_request_lines_close_the_connection() {
    let s = start();
    for line in [
        &b"GET / HTTP/1.0\r\n"[..],
        b"PUT /asdf/asd/fdfzdfs HTTP/1.1\r\n",
        b"DELETE HTTP/1.1\r\n",
    ] {
        let mut c = s.connect();
        c.send(line);
        c.expect_eof(EOF_TIMEOUT);
    }
    // The server still serves new connections.
    s.connect().request(b"get a\r\n", b"END\r\n");
}

#[test]
fn long_line_without_newline_closes_but_long_get_line_works() {
    let s = start();
    let mut c = s.connect();
    c.send(&[b'x'; 3000]);
    c.expect_eof(EOF_TIMEOUT);

    let mut c = s.connect();
    c.request(b"set a 0 0 1\r\n1\r\n", b"STORED\r\n");
    let mut get = b"get".to_vec();
    get.extend_from_slice(&[b' '; 3000]);
    get.extend_from_slice(b"a\r\n");
    c.request(&get, b"VALUE a 0 1\r\n1\r\nEND\r\n");
}

#[test]
fn get_with_301_keys_and_one_get_of_18725_keys() {
    let s = start();
    let mut c = s.connect();
    let mut get = b"get".to_vec();
    for i in 0..301 {
        get.extend_from_slice(format!(" miss{i}").as_bytes());
    }
    get.extend_from_slice(b"\r\n");
    c.request(&get, b"END\r\n");

    // t/getset.t: one get line of 18,725 keys (about 180 KiB), every key a hit.
    const KEYS: usize = 18_725;
    let mut sets = Vec::new();
    for i in 0..KEYS {
        sets.extend_from_slice(
            format!("set key_{i} 0 0 {}\r\n{i}\r\n", i.to_string().len()).as_bytes(),
        );
    }
    c.send(&sets);
    c.read_exact_reply_within(&b"STORED\r\n".repeat(KEYS), Duration::from_secs(60));
    let mut get = b"get".to_vec();
    let mut want = Vec::new();
    for i in 0..KEYS {
        get.extend_from_slice(format!(" key_{i}").as_bytes());
        want.extend_from_slice(
            format!("VALUE key_{i} 0 {}\r\n{i}\r\n", i.to_string().len()).as_bytes(),
        );
    }
    get.extend_from_slice(b"\r\n");
    want.extend_from_slice(b"END\r\n");
    c.request(&get, &want);
}

#[test]
fn pipelining_in_one_write_and_byte_by_byte() {
    let s = start();
    let mut c = s.connect();
    c.request(
        b"set foo 0 0 6\r\nfooval\r\ndelete foo\r\nset foo 0 0 6\r\nfooval\r\ndelete foo\r\n",
        b"STORED\r\nDELETED\r\nSTORED\r\nDELETED\r\n",
    );
    let mut batch = Vec::new();
    let mut want = Vec::new();
    for i in 0..200 {
        batch.extend_from_slice(
            format!("set p{i} {i} 0 3\r\nv{:02}\r\nget p{i}\r\n", i % 100).as_bytes(),
        );
        want.extend_from_slice(
            format!("STORED\r\nVALUE p{i} {i} 3\r\nv{:02}\r\nEND\r\n", i % 100).as_bytes(),
        );
    }
    c.request(&batch, &want);

    let msg = b"set bb 0 0 5\r\nhe\r\nl\r\nget bb\r\nincr nokey 1\r\n";
    c.send_split(msg, &vec![1; msg.len()]);
    c.read_exact_reply(b"STORED\r\nVALUE bb 0 5\r\nhe\r\nl\r\nEND\r\nNOT_FOUND\r\n");
}

#[test]
fn key_length_250_works_and_251_is_rejected() {
    let s = start();
    let mut c = s.connect();
    let k250 = "k".repeat(250);
    let k251 = "k".repeat(251);
    c.request(
        format!("set {k250} 0 0 1\r\nx\r\n").as_bytes(),
        b"STORED\r\n",
    );
    c.request(
        format!("get {k250}\r\n").as_bytes(),
        format!("VALUE {k250} 0 1\r\nx\r\nEND\r\n").as_bytes(),
    );
    let bad = b"CLIENT_ERROR bad command line format\r\n";
    c.request(format!("get {k251}\r\n").as_bytes(), bad);
    c.request(format!("delete {k251}\r\n").as_bytes(), bad);
    c.request(format!("incr {k251} 1\r\n").as_bytes(), bad);
    c.request(format!("touch {k251} 0\r\n").as_bytes(), bad);
    // 1.6.45 swallows the data block of a storage line with a bad key; 1.6.18
    // parses it as a command.
    c.request(
        format!("set {k251} 0 0 1\r\nx\r\n").as_bytes(),
        ours_or_1618(bad, b"CLIENT_ERROR bad command line format\r\nERROR\r\n"),
    );
    // A too-long key anywhere in a multi-get: only the error, earlier hits
    // dropped, and no extra empty line after it.
    c.request(format!("get {k250} {k251}\r\n").as_bytes(), bad);
    c.request(b"get nothing\r\n", b"END\r\n");
}

#[test]
fn too_large_value_is_swallowed_connection_kept_and_set_deletes_old_key() {
    let s = start();
    let mut c = s.connect();
    c.request(b"set foo 0 0 3\r\nMOO\r\n", b"STORED\r\n");
    let big = vec![b'a'; 2 * 1024 * 1024];
    let mut cmd = format!("set foo 0 0 {}\r\n", big.len()).into_bytes();
    cmd.extend_from_slice(&big);
    cmd.extend_from_slice(b"\r\n");
    c.request(&cmd, b"SERVER_ERROR object too large for cache\r\n");
    c.request(b"get foo\r\n", b"END\r\n");

    // The largest size t/getset.t requires to be stored.
    let ok = vec![b'z'; 1_047_552];
    let mut cmd = format!("set big 0 0 {}\r\n", ok.len()).into_bytes();
    cmd.extend_from_slice(&ok);
    cmd.extend_from_slice(b"\r\n");
    c.request(&cmd, b"STORED\r\n");
    let mut want = format!("VALUE big 0 {}\r\n", ok.len()).into_bytes();
    want.extend_from_slice(&ok);
    want.extend_from_slice(b"\r\nEND\r\n");
    c.request(b"get big\r\n", &want);

    // A too-large add is swallowed too; other keys are untouched.
    c.request(b"set small 0 0 1\r\ns\r\n", b"STORED\r\n");
    let mut cmd = format!("add big 0 0 {}\r\n", big.len()).into_bytes();
    cmd.extend_from_slice(&big);
    cmd.extend_from_slice(b"\r\n");
    c.request(&cmd, b"SERVER_ERROR object too large for cache\r\n");
    c.request(b"get small\r\n", b"VALUE small 0 1\r\ns\r\nEND\r\n");
}

#[test]
fn bad_data_chunk_keeps_old_value_and_does_not_resync() {
    let s = start();
    let mut c = s.connect();
    c.request(b"set keep 0 0 3\r\nold\r\n", b"STORED\r\n");
    // Exactly bytes+2 are consumed: "newX\r"; the leftover "\n" is an empty line
    // (1.6.45: CLIENT_ERROR bad command line format; 1.6.18: ERROR).
    c.request(
        b"set keep 0 0 3\r\nnewX\r\n",
        ours_or_1618(
            b"CLIENT_ERROR bad data chunk\r\nCLIENT_ERROR bad command line format\r\n",
            b"CLIENT_ERROR bad data chunk\r\nERROR\r\n",
        ),
    );
    c.request(b"get keep\r\n", b"VALUE keep 0 3\r\nold\r\n");
    c.read_exact_reply(b"END\r\n");
    // Short data eats into the next command: "ab\r\ng" is the block, "et bd" a command.
    c.request(
        b"set bd 0 0 3\r\nab\r\nget bd\r\n",
        b"CLIENT_ERROR bad data chunk\r\nERROR\r\n",
    );
    // Data ending in a bare LF.
    c.request(
        b"set bd 0 0 3\r\nabc\nget bd\r\n",
        b"CLIENT_ERROR bad data chunk\r\nERROR\r\n",
    );
    // With noreply the bad data chunk error is suppressed; the leftover "w" is a command.
    c.request(
        b"set nr 0 0 1 noreply\r\nxyzw\r\nget nr\r\n",
        b"ERROR\r\nEND\r\n",
    );
    c.request(b"get bd\r\n", b"END\r\n");
}

#[test]
fn bad_bytes_token_does_not_swallow_the_data() {
    let s = start();
    let mut c = s.connect();
    let bad = b"CLIENT_ERROR bad command line format\r\n";
    c.request(b"set a 0 0 -1\r\n", bad);
    c.request(
        b"set a 0 0 abc\r\nhello\r\n",
        b"CLIENT_ERROR bad command line format\r\nERROR\r\n",
    );
    c.request(
        b"set a 0 0 4294967295\r\nhello\r\n",
        b"CLIENT_ERROR bad command line format\r\nERROR\r\n",
    );
    c.request(
        b"set a 0 0 2147483647\r\nscoobyscoobydoo\r\n",
        b"CLIENT_ERROR bad command line format\r\nERROR\r\n",
    );
    // A bad flags token is a [DIFF]: 1.6.45 swallows the data block, 1.6.18 does not.
    c.request(
        b"set a -1 0 1\r\nx\r\n",
        ours_or_1618(bad, b"CLIENT_ERROR bad command line format\r\nERROR\r\n"),
    );
    c.request(b"get a\r\n", b"END\r\n");
}

#[test]
fn bytes_zero_and_flags_round_trip() {
    let s = start();
    let mut c = s.connect();
    c.request(b"set z 0 0 0\r\n\r\n", b"STORED\r\n");
    c.request(b"get z\r\n", b"VALUE z 0 0\r\n\r\nEND\r\n");
    for flags in ["0", "123", "65535", "2147483648", "4294967295"] {
        c.request(
            format!("set f 0{flags} 0 1\r\nf\r\n").as_bytes(),
            b"STORED\r\n",
        );
        c.request(
            b"get f\r\n",
            format!("VALUE f {flags} 1\r\nf\r\nEND\r\n").as_bytes(),
        );
    }
}

#[test]
fn storage_commands_semantics() {
    let s = start();
    let mut c = s.connect();
    c.request(b"add a 1 0 1\r\nx\r\n", b"STORED\r\n");
    c.request(b"add a 1 0 1\r\ny\r\n", b"NOT_STORED\r\n");
    c.request(b"replace nope 0 0 1\r\ny\r\n", b"NOT_STORED\r\n");
    c.request(b"replace a 2 0 1\r\ny\r\n", b"STORED\r\n");
    c.request(b"append nope 0 0 1\r\ny\r\n", b"NOT_STORED\r\n");
    c.request(b"prepend nope 0 0 1\r\ny\r\n", b"NOT_STORED\r\n");
    c.request(b"set ap 7 0 2\r\nBB\r\n", b"STORED\r\n");
    c.request(b"append ap 99 0 1\r\nC\r\n", b"STORED\r\n");
    c.request(b"prepend ap 99 0 1\r\nA\r\n", b"STORED\r\n");
    c.request(
        b"get ap a\r\n",
        b"VALUE ap 7 4\r\nABBC\r\nVALUE a 2 1\r\ny\r\nEND\r\n",
    );
    c.request(
        b"get a a nope\r\n",
        b"VALUE a 2 1\r\ny\r\nVALUE a 2 1\r\ny\r\nEND\r\n",
    );
}

#[test]
fn cas_uniques_and_exists_not_found() {
    let s = start();
    let mut c = s.connect();
    c.request(b"cas nokey 0 0 1 1\r\nx\r\n", b"NOT_FOUND\r\n");
    c.request(b"set c 0 0 1\r\nx\r\n", b"STORED\r\n");
    let u1 = gets_unique(&mut c, "c");
    c.request(b"cas c 0 0 1 0\r\ny\r\n", b"EXISTS\r\n");
    c.request(
        format!("cas c 0 0 1 {u1}\r\ny\r\n").as_bytes(),
        b"STORED\r\n",
    );
    c.request(
        format!("cas c 0 0 1 {u1}\r\nz\r\n").as_bytes(),
        b"EXISTS\r\n",
    );
    let u2 = gets_unique(&mut c, "c");
    assert_ne!(u1, u2, "a cas store must change the unique");
    // touch and gat leave the unique unchanged.
    c.request(b"touch c 1000\r\n", b"TOUCHED\r\n");
    assert_eq!(gets_unique(&mut c, "c"), u2, "touch changed the cas unique");
    c.request(b"gat 0 c\r\n", b"VALUE c 0 1\r\ny\r\nEND\r\n");
    assert_eq!(gets_unique(&mut c, "c"), u2, "gat changed the cas unique");
    // Every modification gives a new unique.
    let mut seen = vec![u1, u2];
    for cmd in [
        &b"set c 0 0 1\r\n1\r\n"[..],
        b"append c 0 0 1\r\n2\r\n",
        b"prepend c 0 0 1\r\n3\r\n",
        b"replace c 0 0 1\r\n4\r\n",
    ] {
        c.request(cmd, b"STORED\r\n");
        let u = gets_unique(&mut c, "c");
        assert!(!seen.contains(&u), "unique {u} reused after {}", esc(cmd));
        seen.push(u);
    }
    c.request(b"incr c 1\r\n", b"5\r\n");
    let u = gets_unique(&mut c, "c");
    assert!(!seen.contains(&u), "incr must change the cas unique");
    // cas without its unique token: 1.6.45 swallows the data (§1.16).
    c.request(
        b"cas c 0 0 1\r\nx\r\n",
        ours_or_1618(
            b"CLIENT_ERROR bad command line format\r\n",
            b"ERROR\r\nERROR\r\n",
        ),
    );
    c.request(b"get c\r\n", b"VALUE c 0 1\r\n5\r\nEND\r\n");
}

#[test]
fn noreply_on_every_command_is_silent_and_visible_to_the_next_command() {
    let s = start();
    let mut c = s.connect();
    let steps: &[(&[u8], &[u8], &[u8])] = &[
        (
            b"set n 1 0 1 noreply\r\na\r\n",
            b"get n\r\n",
            b"VALUE n 1 1\r\na\r\nEND\r\n",
        ),
        (
            b"add n 2 0 1 noreply\r\nb\r\n",
            b"get n\r\n",
            b"VALUE n 1 1\r\na\r\nEND\r\n",
        ),
        (
            b"add m 2 0 1 noreply\r\nb\r\n",
            b"get m\r\n",
            b"VALUE m 2 1\r\nb\r\nEND\r\n",
        ),
        (
            b"replace n 3 0 1 noreply\r\nc\r\n",
            b"get n\r\n",
            b"VALUE n 3 1\r\nc\r\nEND\r\n",
        ),
        (
            b"append n 0 0 1 noreply\r\nd\r\n",
            b"get n\r\n",
            b"VALUE n 3 2\r\ncd\r\nEND\r\n",
        ),
        (
            b"prepend n 0 0 1 noreply\r\ne\r\n",
            b"get n\r\n",
            b"VALUE n 3 3\r\necd\r\nEND\r\n",
        ),
        (
            b"cas n 0 0 1 1 noreply\r\nf\r\n",
            b"get n\r\n",
            b"VALUE n 3 3\r\necd\r\nEND\r\n",
        ),
        (b"delete n noreply\r\n", b"get n\r\n", b"END\r\n"),
        (b"delete n noreply\r\n", b"get n\r\n", b"END\r\n"),
        (b"set i 0 0 2\r\n10\r\n", b"", b"STORED\r\n"),
        (
            b"incr i 5 noreply\r\n",
            b"get i\r\n",
            b"VALUE i 0 2\r\n15\r\nEND\r\n",
        ),
        (
            b"decr i 3 noreply\r\n",
            b"get i\r\n",
            b"VALUE i 0 2\r\n12\r\nEND\r\n",
        ),
        (b"incr nokey 1 noreply\r\n", b"get nokey\r\n", b"END\r\n"),
        (
            b"touch m 1000 noreply\r\n",
            b"get m\r\n",
            b"VALUE m 2 1\r\nb\r\nEND\r\n",
        ),
        (b"touch m -1 noreply\r\n", b"get m\r\n", b"END\r\n"),
        (
            b"verbosity 1 noreply\r\n",
            b"get i\r\n",
            b"VALUE i 0 2\r\n12\r\nEND\r\n",
        ),
        (
            b"verbosity noreply\r\n",
            b"get i\r\n",
            b"VALUE i 0 2\r\n12\r\nEND\r\n",
        ),
        (b"flush_all noreply\r\n", b"get i\r\n", b"END\r\n"),
        (b"flush_all 0 noreply\r\n", b"get i\r\n", b"END\r\n"),
    ];
    for (cmd, check, want) in steps {
        let mut bytes = cmd.to_vec();
        bytes.extend_from_slice(check);
        c.send(&bytes);
        c.read_exact_reply(want);
    }
    // gets after a noreply cas with the right unique.
    c.request(b"set g 0 0 1\r\n1\r\n", b"STORED\r\n");
    let u = gets_unique(&mut c, "g");
    c.request(
        format!("cas g 0 0 1 {u} noreply\r\n2\r\nget g\r\n").as_bytes(),
        b"VALUE g 0 1\r\n2\r\nEND\r\n",
    );
}

#[test]
fn incr_decr_wrap_floor_and_errors() {
    let s = start();
    let mut c = s.connect();
    c.request(b"incr nope 1\r\n", b"NOT_FOUND\r\n");
    c.request(b"decr nope 1\r\n", b"NOT_FOUND\r\n");
    c.request(b"set n 77 0 20\r\n18446744073709551615\r\n", b"STORED\r\n");
    c.request(b"incr n 1\r\n", b"0\r\n");
    c.request(b"set n 77 0 19\r\n9223372036854775807\r\n", b"STORED\r\n");
    c.request(b"incr n 1\r\n", b"9223372036854775808\r\n");
    c.request(b"set n 77 0 1\r\n0\r\n", b"STORED\r\n");
    c.request(
        b"incr n 18446744073709551610\r\n",
        b"18446744073709551610\r\n",
    );
    c.request(b"set n 77 0 2\r\n10\r\n", b"STORED\r\n");
    c.request(b"decr n 100\r\n", b"0\r\n");
    c.request(b"decr n 1\r\n", b"0\r\n");
    c.request(b"incr n 4294967297\r\n", b"4294967297\r\n");
    // Flags are kept.
    c.request(
        b"set m 77 0 1\r\n1\r\nincr m 1\r\nget m\r\n",
        b"STORED\r\n2\r\nVALUE m 77 1\r\n2\r\nEND\r\n",
    );
    // An extra token is accepted by both versions.
    c.request(b"incr m 1 2\r\n", b"3\r\n");
    let delta = b"CLIENT_ERROR invalid numeric delta argument\r\n";
    c.request(b"incr n -1\r\n", delta);
    c.request(b"incr n abc\r\n", delta);
    c.request(b"decr n 18446744073709551616\r\n", delta);
    let non_numeric = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n";
    for v in [
        "hi",
        "12abc",
        "",
        "123456789012345678901",
        "18446744073709551616",
    ] {
        c.request(
            format!("set t 0 0 {}\r\n{v}\r\n", v.len()).as_bytes(),
            b"STORED\r\n",
        );
        c.request(b"incr t 1\r\n", non_numeric);
        c.request(b"decr t 1\r\n", non_numeric);
    }
    c.request(b"set sp 0 0 3\r\n 12\r\nincr sp 1\r\n", b"STORED\r\n13\r\n");
    c.request(
        b"set sp 0 0 4\r\n12  \r\nincr sp 1\r\n",
        b"STORED\r\n13\r\n",
    );
    // Missing delta: 1.6.45 CLIENT_ERROR, 1.6.18 ERROR; any error will do.
    c.send(b"incr n\r\n");
    expect_error_line(&mut c);
    c.request(b"get nope\r\n", b"END\r\n");
}

#[test]
fn delete_is_strict() {
    let s = start();
    let mut c = s.connect();
    c.request(b"delete nope\r\n", b"NOT_FOUND\r\n");
    c.request(
        b"set d 0 0 1\r\nx\r\ndelete d\r\n",
        b"STORED\r\nDELETED\r\n",
    );
    c.request(
        b"set d 0 0 1\r\nx\r\ndelete d 0\r\n",
        b"STORED\r\nDELETED\r\n",
    );
    c.request(
        b"set d 0 0 1\r\nx\r\ndelete d 0 noreply\r\nget d\r\n",
        b"STORED\r\nEND\r\n",
    );
    c.request(b"set d 0 0 1\r\nx\r\n", b"STORED\r\n");
    // Anything but `delete <key> [0] [noreply]` is an error and deletes nothing.
    for bad in [
        &b"delete d 10\r\n"[..],
        b"delete d a b c d\r\n",
        b"delete d 0 0\r\n",
        b"delete\r\n",
    ] {
        c.send(bad);
        expect_error_line(&mut c);
    }
    c.request(
        b"delete d 10 noreply\r\nget d\r\n",
        b"VALUE d 0 1\r\nx\r\nEND\r\n",
    );
    c.request(b"get d\r\n", b"VALUE d 0 1\r\nx\r\nEND\r\n");
}

#[test]
fn touch_and_gat() {
    let s = start();
    let mut c = s.connect();
    c.request(b"touch nope 0\r\n", b"NOT_FOUND\r\n");
    c.request(b"gat 0 nope\r\n", b"END\r\n");
    c.request(b"set t 3 0 1\r\nx\r\n", b"STORED\r\n");
    c.request(b"touch t 1000\r\n", b"TOUCHED\r\n");
    c.request(
        b"gat 2000 t nope t\r\n",
        b"VALUE t 3 1\r\nx\r\nVALUE t 3 1\r\nx\r\nEND\r\n",
    );
    let u = gets_unique(&mut c, "t");
    c.request(
        b"gats 0 t\r\n",
        format!("VALUE t 3 1 {u}\r\nx\r\nEND\r\n").as_bytes(),
    );
    let bad = b"CLIENT_ERROR invalid exptime argument\r\n";
    c.request(b"touch t abc\r\n", bad);
    c.request(b"gat abc t\r\n", bad);
    c.request(b"gats abc t\r\n", bad);
    // Negative exptime: expired at once. gat returns the item it touched.
    c.request(b"gat -1 t\r\n", b"VALUE t 3 1\r\nx\r\nEND\r\n");
    c.request(b"get t\r\n", b"END\r\n");
    c.request(
        b"set t 0 0 1\r\nx\r\ntouch t -1\r\nget t\r\n",
        b"STORED\r\nTOUCHED\r\nEND\r\n",
    );
    c.request(b"set e 0 -1 1\r\nx\r\nget e\r\n", b"STORED\r\nEND\r\n");
    // An absolute time in the past (above 30 days) is expired too.
    c.request(b"set e 0 2592001 1\r\nx\r\nget e\r\n", b"STORED\r\nEND\r\n");
}

#[test]
fn flush_all_forms() {
    let s = start();
    let mut c = s.connect();
    c.request(
        b"set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\n",
        b"STORED\r\nSTORED\r\n",
    );
    c.request(b"flush_all\r\n", b"OK\r\n");
    c.request(b"get a b\r\n", b"END\r\n");
    // An item set right afterwards, in the same second, is visible.
    c.request(
        b"set a 0 0 1\r\n3\r\nget a\r\n",
        b"STORED\r\nVALUE a 0 1\r\n3\r\nEND\r\n",
    );
    c.request(b"flush_all 0\r\nget a\r\n", b"OK\r\nEND\r\n");
    c.request(
        b"set a 0 0 1\r\n3\r\nflush_all -1\r\nget a\r\n",
        b"STORED\r\nOK\r\nEND\r\n",
    );
    c.request(
        b"flush_all abc\r\n",
        b"CLIENT_ERROR invalid exptime argument\r\n",
    );
    // A delayed flush does not hide items before its deadline.
    c.request(
        b"set a 0 0 1\r\n4\r\nflush_all 86400\r\nget a\r\n",
        b"STORED\r\nOK\r\nVALUE a 0 1\r\n4\r\nEND\r\n",
    );
    c.request(b"flush_all\r\n", b"OK\r\n");
}

#[test]
fn version_and_verbosity() {
    let s = start();
    let mut c = s.connect();
    c.send(b"version\r\n");
    let line = c.read_line();
    let text = String::from_utf8_lossy(&line).to_string();
    let v = text
        .strip_prefix("VERSION ")
        .and_then(|v| v.strip_suffix("\r\n"))
        .unwrap_or_else(|| panic!("bad version reply {}", esc(&line)));
    // memccapable treats "1.0.x".."1.5.x" and "0.x" as pre-1.6 servers.
    let b = v.as_bytes();
    assert!(
        b.len() >= 3 && (b[0] > b'1' || (b[0] == b'1' && b[1] == b'.' && b[2] >= b'6')),
        "version {v:?} does not look like 1.6 or later (memccapable depends on it)"
    );
    c.request(b"version foo\r\n", &line);
    c.request(b"verbosity 1\r\n", b"OK\r\n");
    c.request(b"verbosity 0\r\n", b"OK\r\n");
    c.request(b"verbosity noreply\r\nversion\r\n", &line);
    c.request(
        b"verbosity invalid\r\n",
        b"CLIENT_ERROR bad command line format\r\n",
    );
    c.send(b"verbosity\r\n");
    expect_error_line(&mut c);
}

#[test]
fn stats_forms_cachedump_and_cache_memlimit() {
    let s = start();
    let mut c = s.connect();
    c.send(b"stats\r\n");
    let reply = c
        .read_until(b"END\r\n", REPLY_TIMEOUT)
        .expect("stats reply");
    for line in reply.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(
            (line.starts_with(b"STAT ") || line == b"END\r") && line.ends_with(b"\r"),
            "bad stats line {}",
            esc(line)
        );
    }
    let stats = parse_stats(&reply);
    for name in [
        "pid",
        "uptime",
        "time",
        "version",
        "curr_connections",
        "total_connections",
        "cmd_get",
        "cmd_set",
        "cmd_flush",
        "cmd_touch",
        "get_hits",
        "get_misses",
        "delete_hits",
        "delete_misses",
        "incr_hits",
        "incr_misses",
        "decr_hits",
        "decr_misses",
        "cas_hits",
        "cas_misses",
        "cas_badval",
        "touch_hits",
        "touch_misses",
        "curr_items",
        "total_items",
        "bytes",
        "limit_maxbytes",
        "threads",
    ] {
        assert!(stats.iter().any(|(k, _)| k == name), "stats lacks {name}");
    }
    c.request(b"stats reset\r\n", b"RESET\r\n");
    // t/issue_104.t: one hit and one miss after a reset.
    c.request(
        b"set h 0 0 1\r\nx\r\nget h\r\nget nope\r\n",
        b"STORED\r\nVALUE h 0 1\r\nx\r\nEND\r\nEND\r\n",
    );
    assert_eq!(stat(&mut c, "cmd_get").as_deref(), Some("2"));
    assert_eq!(stat(&mut c, "get_hits").as_deref(), Some("1"));
    assert_eq!(stat(&mut c, "get_misses").as_deref(), Some("1"));

    c.send(b"stats settings\r\n");
    let settings = parse_stats(
        &c.read_until(b"END\r\n", REPLY_TIMEOUT)
            .expect("stats settings"),
    );
    let get = |k: &str| {
        settings
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("item_size_max"), Some("1048576"));
    assert_eq!(get("cas_enabled"), Some("yes"));

    c.send(b"stats cachedump 1 1\r\n");
    let dump = c
        .read_until(b"END\r\n", REPLY_TIMEOUT)
        .expect("cachedump ends with END");
    assert!(dump.ends_with(b"END\r\n"), "{}", esc(&dump));
    c.request(b"cache_memlimit 50\r\n", b"OK\r\n");
    c.request(b"stats bogus\r\n", b"ERROR\r\n");
    c.send(b"stats noreply\r\n");
    expect_error_line(&mut c);
    c.request(b"get h\r\n", b"VALUE h 0 1\r\nx\r\nEND\r\n");
}

#[test]
fn quit_closes_the_connection() {
    let s = start();
    let mut c = s.connect();
    c.request(b"get a\r\n", b"END\r\n");
    c.send(b"quit\r\n");
    c.expect_eof(EOF_TIMEOUT);
    // Commands after quit in the same write are not answered.
    let mut c = s.connect();
    c.send(b"quit\r\nget a\r\n");
    c.expect_eof(EOF_TIMEOUT);
}

#[test]
fn binary_protocol_first_byte_gets_an_error_and_close() {
    let s = start();
    let mut c = s.connect();
    // A bogus binary-protocol packet (magic 0x80, opcode SET, no body), as in
    // t/issue_192.t. memcached answers a binary error and closes; a text-only
    // server answers a text error and closes.
    let mut pkt = vec![0x80, 0x01, 0x00, 0x00];
    pkt.extend_from_slice(&[0; 20]);
    c.send(&pkt);
    let got = match c.read_until(b"\x00never", EOF_TIMEOUT) {
        Ok(v) => v,
        Err(partial) => partial,
    };
    assert!(
        c.at_eof(),
        "connection not closed after a binary packet; got {}",
        esc(&got)
    );
    assert!(
        got.starts_with(b"ERROR")
            || got.starts_with(b"CLIENT_ERROR ")
            || got.starts_with(b"SERVER_ERROR ")
            || got.first() == Some(&0x81),
        "expected an error reply before the close, got {}",
        esc(&got)
    );
    // t/issue_192.t: the server still accepts connections.
    let mut c2 = s.connect();
    c2.send(b"version\r\n");
    let line = c2.read_line();
    assert!(line.starts_with(b"VERSION "), "{}", esc(&line));
}

#[test]
fn max_connections_rejects_with_error_and_counts() {
    if target() == Target::Memcached {
        // memcached's -c counts its own reserved descriptors and, run as root
        // with -c 2, cannot even open /etc/passwd; the numbers do not carry over.
        return skip(
            "max_connections_rejects_with_error_and_counts",
            "store-only test",
        );
    }
    let s = StoreServer::start(&["-c", "2"]);
    let mut a = s.connect();
    // The readiness probe's connection is released asynchronously: wait
    // until `a` is the only one counted, or `b` could be the one refused.
    assert!(
        poll_until(Duration::from_secs(10), || stat(&mut a, "curr_connections")
            .as_deref()
            == Some("1")),
        "the readiness probe's connection was never released"
    );
    let mut b = s.connect();
    b.send(b"version\r\n");
    let line = b.read_line();
    assert!(line.starts_with(b"VERSION "), "{}", esc(&line));
    let mut third = s.connect();
    third.read_exact_reply(b"ERROR Too many open connections\r\n");
    third.expect_eof(EOF_TIMEOUT);
    assert_eq!(stat(&mut a, "rejected_connections").as_deref(), Some("1"));
    // Closing one makes room again (the server notices the close asynchronously).
    drop(b);
    let ok = poll_until(Duration::from_secs(10), || {
        let mut c = s.connect();
        c.send(b"version\r\n");
        matches!(c.read_until(b"\r\n", Duration::from_secs(2)), Ok(l) if l.starts_with(b"VERSION "))
    });
    assert!(ok, "a connection slot was not freed after a client closed");
}

#[test]
fn durability_across_sigterm_and_restart() {
    if target() == Target::Memcached {
        return skip(
            "durability_across_sigterm_and_restart",
            "memcached keeps nothing on disk",
        );
    }
    let mut s = start();
    let mut c = s.connect();
    let mut want = Vec::new();
    for i in 0..100 {
        let v = format!("value-{i}-{}", "x".repeat(i));
        c.request(
            format!("set k{i} {i} 0 {}\r\n{v}\r\n", v.len()).as_bytes(),
            b"STORED\r\n",
        );
        want.push(v);
    }
    c.request(b"delete k5\r\n", b"DELETED\r\n");
    c.request(
        b"incr k7 1\r\n",
        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
    );
    c.request(b"set n 0 0 2\r\n41\r\nincr n 1\r\n", b"STORED\r\n42\r\n");
    c.request(b"append k9 0 0 1\r\n!\r\n", b"STORED\r\n");
    want[9].push('!');
    drop(c);
    let status = s.sigterm(Duration::from_secs(10));
    assert!(
        status.success(),
        "SIGTERM exit status {status:?}; stderr:\n{}",
        s.stderr_text()
    );
    s.restart();
    let mut c = s.connect();
    for (i, v) in want.iter().enumerate() {
        let expected = if i == 5 {
            b"END\r\n".to_vec()
        } else {
            format!("VALUE k{i} {i} {}\r\n{v}\r\nEND\r\n", v.len()).into_bytes()
        };
        c.request(format!("get k{i}\r\n").as_bytes(), &expected);
    }
    c.request(b"get n\r\n", b"VALUE n 0 2\r\n42\r\nEND\r\n");
}

#[test]
fn pipelined_command_after_a_reply_over_1_mib_is_answered() {
    // Found by the differential test: a get whose reply is larger than 1 MiB,
    // followed by another command in the same write.
    let s = start();
    let mut c = s.connect();
    let v = vec![b'B'; 600_000];
    let mut set = format!("set big 0 0 {}\r\n", v.len()).into_bytes();
    set.extend_from_slice(&v);
    set.extend_from_slice(b"\r\n");
    c.request(&set, b"STORED\r\n");
    let mut want = Vec::new();
    for _ in 0..2 {
        want.extend_from_slice(format!("VALUE big 0 {}\r\n", v.len()).as_bytes());
        want.extend_from_slice(&v);
        want.extend_from_slice(b"\r\n");
    }
    want.extend_from_slice(b"END\r\nEND\r\n");
    c.request(b"get big big\r\nget nothing\r\n", &want);
}
