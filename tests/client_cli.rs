//! The `client` binary against a real memcached 1.6 (`/usr/bin/memcached`):
//! exit codes and the exact bytes on stdout, one fresh server per test.
//!
//! Runs the binary Cargo built for this package (`CARGO_BIN_EXE_client`).
//! Every memcached is the shared harness's guard (`common::Memcached`), which
//! kills it when the test ends, pass or fail; startup is polled against a
//! deadline.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::Memcached;

/// Where nothing listens: privileged, so never handed out as a free port.
const REFUSED_ADDR: &str = "127.0.0.1:1";

/// Runs `client --server <memcached> args...` with `stdin` as its input.
trait RunClient {
    fn run(&self, args: &[&str], stdin: &[u8]) -> Output;
}

impl RunClient for Memcached {
    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_client(&format!("127.0.0.1:{}", self.port), args, stdin)
    }
}

fn run_client(server: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--server", server, "--timeout-ms", "5000"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client binary");
    // Dropping stdin after writing closes it, so `-` sees end of input.
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("client output")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited, not killed")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts exit code and exact stdout.
#[track_caller]
fn check(output: Output, exit: i32, stdout: &[u8]) -> Output {
    assert_eq!(
        (code(&output), output.stdout.as_slice()),
        (exit, stdout),
        "stdout {:?}, stderr {:?}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    output
}

#[test]
fn set_then_get_prints_exactly_the_value() {
    let mc = Memcached::start(&[]);
    check(mc.run(&["set", "k", "hello"], b""), 0, b"STORED\n");
    check(mc.run(&["get", "k"], b""), 0, b"hello");
    check(mc.run(&["get", "missing"], b""), 1, b"");
    // Several keys: each value then a newline; a miss makes the exit 1.
    mc.run(&["set", "k2", "world"], b"");
    check(mc.run(&["get", "k", "k2"], b""), 0, b"hello\nworld\n");
    check(
        mc.run(&["get", "k", "nope", "k2"], b""),
        1,
        b"hello\nworld\n",
    );
    let verbose = check(mc.run(&["get", "-v", "k"], b""), 0, b"hello");
    assert_eq!(stderr(&verbose), "k 0 5\n");
}

#[test]
fn stdin_values_are_binary_safe() {
    let mc = Memcached::start(&[]);
    let value: Vec<u8> = (0..=255u8).chain(*b"\r\nEND\r\n\r\n").collect();
    check(
        mc.run(
            &["set", "bin", "-", "--flags", "42", "--exptime", "0"],
            &value,
        ),
        0,
        b"STORED\n",
    );
    check(mc.run(&["get", "bin"], b""), 0, &value);
    let gets = check(mc.run(&["gets", "bin"], b""), 0, &value);
    let meta = stderr(&gets);
    let fields: Vec<&str> = meta.trim_end().split(' ').collect();
    assert_eq!(&fields[..2], ["bin", "42"], "{meta}");
    assert!(fields[2].parse::<u64>().is_ok(), "{meta}");
    // Empty stdin is the empty value.
    check(mc.run(&["set", "empty", "-"], b""), 0, b"STORED\n");
    check(mc.run(&["get", "empty"], b""), 0, b"");
}

#[test]
fn conditional_stores_exit_1_when_not_stored() {
    let mc = Memcached::start(&[]);
    check(mc.run(&["add", "k", "a"], b""), 0, b"STORED\n");
    check(mc.run(&["add", "k", "b"], b""), 1, b"NOT_STORED\n");
    check(mc.run(&["replace", "none", "b"], b""), 1, b"NOT_STORED\n");
    check(mc.run(&["replace", "k", "B"], b""), 0, b"STORED\n");
    check(mc.run(&["append", "k", "C"], b""), 0, b"STORED\n");
    check(mc.run(&["prepend", "k", "A"], b""), 0, b"STORED\n");
    check(mc.run(&["append", "none", "C"], b""), 1, b"NOT_STORED\n");
    check(mc.run(&["get", "k"], b""), 0, b"ABC");
}

#[test]
fn cas_flow_through_gets() {
    let mc = Memcached::start(&[]);
    mc.run(&["set", "c", "v1"], b"");
    let gets = check(mc.run(&["gets", "c"], b""), 0, b"v1");
    let meta = stderr(&gets);
    let cas = meta
        .trim_end()
        .split(' ')
        .nth(2)
        .expect("KEY FLAGS CAS")
        .to_string();
    check(mc.run(&["cas", "c", "v2", &cas], b""), 0, b"STORED\n");
    check(mc.run(&["cas", "c", "v3", &cas], b""), 1, b"EXISTS\n");
    check(mc.run(&["cas", "gone", "v3", &cas], b""), 1, b"NOT_FOUND\n");
    check(mc.run(&["get", "c"], b""), 0, b"v2");
}

#[test]
fn incr_decr_print_the_new_value() {
    let mc = Memcached::start(&[]);
    check(mc.run(&["incr", "n", "1"], b""), 1, b"NOT_FOUND\n");
    mc.run(&["set", "n", "18446744073709551615"], b"");
    check(mc.run(&["incr", "n", "1"], b""), 0, b"0\n");
    check(mc.run(&["incr", "n", "41"], b""), 0, b"41\n");
    check(mc.run(&["decr", "n", "100"], b""), 0, b"0\n");
    mc.run(&["set", "t", "text"], b"");
    let err = check(mc.run(&["incr", "t", "1"], b""), 2, b"");
    assert_eq!(
        stderr(&err),
        "CLIENT_ERROR cannot increment or decrement non-numeric value\n"
    );
}

#[test]
fn delete_touch_gat() {
    let mc = Memcached::start(&[]);
    mc.run(&["set", "d", "v"], b"");
    check(mc.run(&["delete", "d"], b""), 0, b"DELETED\n");
    check(mc.run(&["delete", "d"], b""), 1, b"NOT_FOUND\n");
    check(mc.run(&["touch", "d", "10"], b""), 1, b"NOT_FOUND\n");
    mc.run(&["set", "t", "v", "--flags", "3"], b"");
    check(mc.run(&["touch", "t", "100"], b""), 0, b"TOUCHED\n");
    check(mc.run(&["gat", "100", "t"], b""), 0, b"v");
    let gats = check(mc.run(&["gats", "100", "t"], b""), 0, b"v");
    assert!(stderr(&gats).starts_with("t 3 "), "{}", stderr(&gats));
    // Negative expiry: expired at once; the argument is not taken for a flag.
    check(mc.run(&["gat", "-1", "t"], b""), 0, b"v");
    check(mc.run(&["get", "t"], b""), 1, b"");
    mc.run(&["set", "e", "v", "--exptime", "-1"], b"");
    check(mc.run(&["get", "e"], b""), 1, b"");
}

#[test]
fn admin_commands() {
    let mc = Memcached::start(&[]);
    let version = check(mc.run(&["version"], b""), 0, b"1.6.18\n");
    assert!(version.stderr.is_empty());
    check(mc.run(&["verbosity", "0"], b""), 0, b"OK\n");
    mc.run(&["set", "f", "v"], b"");
    check(mc.run(&["flush-all"], b""), 0, b"OK\n");
    check(mc.run(&["get", "f"], b""), 1, b"");
    check(mc.run(&["flush-all", "0"], b""), 0, b"OK\n");
    let stats = mc.run(&["stats"], b"");
    assert_eq!(code(&stats), 0);
    let text = String::from_utf8(stats.stdout).unwrap();
    assert!(text.lines().any(|l| l == "version 1.6.18"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("pid ")), "{text}");
    let settings = String::from_utf8(mc.run(&["stats", "settings"], b"").stdout).unwrap();
    assert!(
        settings.lines().any(|l| l == "item_size_max 1048576"),
        "{settings}"
    );
    check(mc.run(&["stats", "reset"], b""), 0, b"");
    let bogus = check(mc.run(&["stats", "bogus"], b""), 2, b"");
    assert_eq!(stderr(&bogus), "ERROR\n");
}

#[test]
fn noreply_is_done_before_exit() {
    let mc = Memcached::start(&[]);
    check(mc.run(&["set", "nr", "quiet", "--noreply"], b""), 0, b"");
    check(mc.run(&["get", "nr"], b""), 0, b"quiet");
}

#[test]
fn errors_exit_2_with_a_message() {
    let mc = Memcached::start(&[]);
    let refused = check(run_client(REFUSED_ADDR, &["get", "k"], b""), 2, b"");
    assert!(
        stderr(&refused).contains("cannot connect to 127.0.0.1:1"),
        "{}",
        stderr(&refused)
    );
    let bad_key = check(mc.run(&["set", "bad key", "v"], b""), 2, b"");
    assert!(
        stderr(&bad_key).contains("key contains byte 0x20"),
        "{}",
        stderr(&bad_key)
    );
    let too_large = vec![b'x'; 2 * 1024 * 1024];
    let large = check(mc.run(&["set", "big", "-"], &too_large), 2, b"");
    assert_eq!(stderr(&large), "SERVER_ERROR object too large for cache\n");
    // Bad arguments are clap's usage errors: exit 2.
    check(mc.run(&["incr", "n", "-1"], b""), 2, b"");
    check(mc.run(&["get"], b""), 2, b"");
    check(mc.run(&["frobnicate"], b""), 2, b"");
}

#[test]
fn help_has_examples() {
    for args in [
        vec!["--help"],
        vec!["set", "--help"],
        vec!["bench", "--help"],
    ] {
        let help = run_client(REFUSED_ADDR, &args, b"");
        assert_eq!(code(&help), 0);
        assert!(String::from_utf8_lossy(&help.stdout).contains("Examples:"));
    }
}

#[test]
fn bench_reports_json() {
    let mc = Memcached::start(&[]);
    let args = [
        "bench",
        "--connections",
        "4",
        "--pipeline",
        "4",
        "--keys",
        "500",
        "--ops",
        "4000",
        "--preload",
        "--workload",
        "get",
        "--json",
    ];
    let output = mc.run(&args, b"");
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let json = String::from_utf8(output.stdout).unwrap();
    assert!(
        json.starts_with('{') && json.trim_end().ends_with('}'),
        "{json}"
    );
    for field in ["\"ops\":4000", "\"hits\":4000", "\"errors\":0", "\"p99\":"] {
        assert!(json.contains(field), "{field} in {json}");
    }
    let text = mc.run(&["bench", "--connections", "2", "--duration-s", "0.2"], b"");
    assert_eq!(code(&text), 0, "{}", stderr(&text));
    assert!(String::from_utf8_lossy(&text.stdout).contains("ops/s"));
}
