//! `memccapable -a` (libmemcached-tools' protocol checker, ASCII tests only)
//! against our server and, as the reference, against the system memcached.
//!
//! memccapable prints one line per test, `<name> [pass]` or `[fail]`, and
//! ends with "All tests passed". We parse those lines rather than trusting
//! the exit status alone, and require all 27 ASCII tests to pass: memcached
//! 1.6.18 passes all 27 (1.6.45 fails "ascii delete" and "ascii delete
//! noreply", which is why our delete is strict; see memcached-protocol.md §1.7).

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// Number of ASCII tests in libmemcached-tools' memccapable.
const ASCII_TESTS: usize = 27;
const MEMCAPABLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs memccapable against `port` and returns (test name, verdict) pairs.
fn run_memcapable(port: u16) -> (Vec<(String, String)>, ToolRun) {
    let bin = memccapable_bin().expect("checked by the caller");
    let mut cmd = Command::new(bin);
    // -t: per-I/O timeout in seconds, so a server that does not answer makes
    // one test fail instead of hanging the run.
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-a", "-t", "5"]);
    let run = run_tool(cmd, MEMCAPABLE_TIMEOUT);
    let mut results = Vec::new();
    for line in run.stdout.lines() {
        let line = line.trim_end();
        if let Some(open) = line.rfind('[') {
            if line.ends_with(']') {
                let name = line[..open].trim().to_string();
                let verdict = line[open + 1..line.len() - 1].to_string();
                if name.starts_with("ascii ") {
                    results.push((name, verdict));
                }
            }
        }
    }
    (results, run)
}

fn assert_all_pass(who: &str, results: &[(String, String)], run: &ToolRun) {
    let failed: Vec<_> = results.iter().filter(|(_, v)| v != "pass").collect();
    assert!(
        failed.is_empty() && results.len() == ASCII_TESTS,
        "memccapable against {who}: {} results, {} not passing: {failed:?}\nstdout:\n{}\nstderr:\n{}",
        results.len(),
        failed.len(),
        run.stdout,
        run.stderr
    );
    assert!(
        run.stdout.contains("All tests passed"),
        "memccapable against {who} did not report success:\n{}",
        run.stdout
    );
}

#[test]
fn memcapable_ascii_all_pass_against_reference_memcached() {
    let test = "memcapable_ascii_all_pass_against_reference_memcached";
    if memccapable_bin().is_none() {
        return skip(
            test,
            "memccapable not found (apt-get install libmemcached-tools)",
        );
    }
    let Some(mc) = Memcached::start_or_skip(test) else {
        return;
    };
    let (results, run) = run_memcapable(mc.port);
    assert_all_pass("memcached", &results, &run);
}

#[test]
fn memcapable_ascii_all_pass_against_store() {
    let test = "memcapable_ascii_all_pass_against_store";
    if memccapable_bin().is_none() {
        return skip(
            test,
            "memccapable not found (apt-get install libmemcached-tools)",
        );
    }
    let server = StoreServer::start(&[]);
    let (results, run) = run_memcapable(server.port);
    assert_all_pass("store", &results, &run);
}
