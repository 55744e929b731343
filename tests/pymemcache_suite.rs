//! Runs pymemcache 4.0.0's own integration tests (they ship inside the
//! installed package as `pymemcache/test/test_integration.py`) against our
//! server and against the system memcached in the same test, and requires the
//! same pass/skip/fail counts (memcached 1.6.18: 100 passed, 3 skipped; the
//! 3 skips are `test_tls`, skipped by pymemcache itself).
//!
//! How it is invoked: pytest is given the test file by path. The file's
//! directory holds pymemcache's `conftest.py`, which pytest loads as an
//! initial conftest and which defines `--server` and `--port` (defaults
//! localhost:11211). The tests are marked `@pytest.mark.integration()` and are
//! selected with `-m integration`. We point pytest at our own ini file and
//! rootdir in a temp dir (registering the `integration` marker and keeping
//! `.pytest_cache` out of site-packages with `-p no:cacheprovider`).
//!
//! Commands pymemcache's integration tests send that are not classic
//! get/set/add/replace/append/prepend/cas/gets/delete/incr/decr/touch:
//! - `flush_all 0` (with and without `noreply`) at the start of every test;
//! - `stats cachedump 1 1` (test_misc; any reply ending in `END` is accepted,
//!   memcached 1.6.18 answers `ITEM ... [1 b; 0 s]` lines);
//! - `cache_memlimit 50` (test_misc; must answer `OK`);
//! - `touch <key> 0` / `touch <key> 1` (test_touch);
//! - a 5 MiB value (`value` * 1 MiB) that must fail with `SERVER_ERROR`
//!   (test_get_set_large with pickle_serde) while the compressed one is stored;
//! - `set`s with `noreply`, then an immediate `get` on the same connection.
//!
//! Keys with spaces, `\r\n`, >250 bytes or non-ASCII are rejected by the
//! client before sending (test_errors), so they never reach the server.

mod common;

use common::pymemcache::{failure_lines, pymemcache_test_file, run_suite};
use common::*;

#[test]
fn pymemcache_integration_suite_matches_memcached() {
    let test = "pymemcache_integration_suite_matches_memcached";
    let Some(py) = python_with_pymemcache() else {
        return skip(
            test,
            "python3 with pymemcache and pytest not found (pip install pymemcache==4.0.0 pytest)",
        );
    };
    let file = pymemcache_test_file(&py);

    let reference = if memcached_bin().is_some() {
        let mc = Memcached::start(&[]);
        let (counts, run) = run_suite(&py, &file, mc.port);
        assert!(
            counts.failed == 0 && counts.errors == 0 && counts.passed > 0,
            "pymemcache suite fails against memcached itself: {counts:?}\n{}",
            run.stdout
        );
        Some(counts)
    } else {
        skip(
            test,
            "memcached not found; checking our server alone (0 failures required)",
        );
        None
    };

    let server = StoreServer::start(&[]);
    let (counts, run) = run_suite(&py, &file, server.port);
    let failures = failure_lines(&run.stdout);
    match reference {
        Some(reference) => assert_eq!(
            counts, reference,
            "pymemcache suite: store {counts:?} vs memcached {reference:?}\n{failures}\n\nfull output:\n{}",
            run.stdout
        ),
        None => assert!(
            counts.failed == 0 && counts.errors == 0 && counts.passed > 0,
            "pymemcache suite against store: {counts:?}\n{failures}\n\nfull output:\n{}",
            run.stdout
        ),
    }
}
