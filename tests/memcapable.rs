//! `memccapable -a` (libmemcached-tools' protocol checker, ASCII tests only)
//! against our server and, as the reference, against the system memcached.
//!
//! memccapable prints one line per test, `<name> [pass]` or `[fail]`, and
//! ends with "All tests passed". We parse those lines rather than trusting
//! the exit status alone, and require all 27 ASCII tests to pass: memcached
//! 1.6.18 passes all 27 (1.6.45 fails "ascii delete" and "ascii delete
//! noreply", which is why our delete is strict; see memcached-protocol.md §1.7).

mod common;

use common::memcapable::{run_memcapable, ASCII_TESTS};
use common::*;

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

/// Through a follower, every request is forwarded to the leader (reads
/// too, in the default linearizable mode) and pipelined there: the replies
/// must still be memcached's, in order, `noreply` included.
#[test]
fn memcapable_ascii_all_pass_against_a_follower() {
    let test = "memcapable_ascii_all_pass_against_a_follower";
    if memccapable_bin().is_none() {
        return skip(
            test,
            "memccapable not found (apt-get install libmemcached-tools)",
        );
    }
    let cluster = common::cluster::start(3);
    let (_, follower) = common::cluster::leader_and_follower(&cluster);
    let (results, run) = run_memcapable(follower.port());
    assert_all_pass("a follower", &results, &run);
}
