//! Rust clients run the test suites they ship against the store.
//!
//! async-memcached 0.9.0 (Shopify's; crates.io): its integration suite
//! (ASCII, meta, pipelines, cancellation, wire) starts its own memcached
//! for every test through `MEMCACHED_BIN`, which here is
//! tests/clients/memcached_as_store.sh: memcached's command line made a
//! `store addsrv`'s. The suite runs as its scripts/test-integration.sh
//! runs it (`cargo test --all-features --tests -- --include-ignored`),
//! from the package crates.io serves, with its own Cargo.lock;
//! `.ci/rust-clients` fetches and builds it into the directory
//! `STORE_RUST_CLIENTS` names. Its harness asks for memcached 1.6.40 or
//! newer, so it cannot be pointed at Debian's 1.6.18; this server answers
//! `version` as 1.6.45, the protocol it follows.
//!
//! Its tests over a Unix socket run against the store's `-s`. Left out:
//! the tests through Toxiproxy, a Go binary the suite's installer
//! downloads from GitHub, which CI cannot reach; and one that restarts its
//! server and expects the items gone, memcached's loss that the store, being
//! durable, does not have (the test finds `before` still there).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

/// The suite builds beforehand (`.ci/rust-clients`) and runs in about a
/// minute; a hang fails within this.
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);

/// Tests of async-memcached 0.9.0 left out (see the module doc).
const LEFT_OUT: [&str; 9] = [
    // Durability.
    "server_restart_invalidates_tcp_and_unix_connections",
    // Toxiproxy.
    "caller_timeouts_allow_recovery_with_a_new_connection",
    "fragmented_requests_and_responses_preserve_payloads",
    "meta_write_pipeline_reports_disconnect_and_can_be_retried_on_a_new_client",
    "single_and_multi_reads_report_proxy_shutdown",
    "test_set_multi_errors_on_downstream_with_toxic_client_via_limit_data",
    "test_set_multi_errors_on_upstream_with_toxic_client_via_limit_data",
    "test_set_multi_errors_with_toxic_client_via_with_down",
    "truncated_read_bodies_never_return_partial_values",
];

/// Tests the suite must run, at least: 240 with these left out (unit
/// tests included).
const SUITE_TESTS_MIN: usize = 240;

#[test]
fn async_memcached_passes_its_own_suite() {
    let test = "async_memcached_passes_its_own_suite";
    let Some(root) = std::env::var_os("STORE_RUST_CLIENTS").map(PathBuf::from) else {
        return skip(
            test,
            "STORE_RUST_CLIENTS is not set (bash .ci/rust-clients fetches and builds the suites)",
        );
    };
    let package = root.join("async-memcached-0.9.0");
    assert!(
        package.join("Cargo.toml").is_file(),
        "{package:?} holds no package"
    );
    let wrapper =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/memcached_as_store.sh");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&package)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .env("MEMCACHED_BIN", &wrapper)
        .env("STORE_BIN", StoreServer::store_bin())
        .env("RUST_TEST_THREADS", "4")
        .args([
            "test",
            "--locked",
            "--all-features",
            "--tests",
            "--no-fail-fast",
            "--",
        ])
        .args(["--include-ignored", "--exact"]);
    for name in LEFT_OUT {
        cmd.args(["--skip", name]);
    }
    let run = run_tool(cmd, SUITE_TIMEOUT);
    let output = format!("{}\n{}", run.stdout, run.stderr);
    let results: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("test result:"))
        .collect();
    let passed: usize = results
        .iter()
        .filter_map(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        .sum();
    assert!(
        run.status.success() && results.iter().all(|l| l.starts_with("test result: ok.")),
        "async-memcached's suite against the store: {}\n{output}",
        run.status
    );
    assert!(
        passed >= SUITE_TESTS_MIN,
        "async-memcached's suite ran {passed} tests, fewer than {SUITE_TESTS_MIN}:\n{output}"
    );
    println!(
        "async-memcached 0.9.0's own suite: {passed} passed ({} left out)",
        LEFT_OUT.len()
    );
}
