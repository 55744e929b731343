//! Rust clients run the test suites they ship against the store:
//! async-memcached and the `memcache` crate (below).
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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cluster;
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

/// The directory `.ci/rust-clients` fetched and built the suites into, and
/// in it `package`; `None` (skipped) without one.
fn published(test: &str, package: &str) -> Option<(PathBuf, PathBuf)> {
    let Some(root) = std::env::var_os("STORE_RUST_CLIENTS").map(PathBuf::from) else {
        skip(
            test,
            "STORE_RUST_CLIENTS is not set (bash .ci/rust-clients fetches and builds the suites)",
        );
        return None;
    };
    let path = root.join(package);
    assert!(
        path.join("Cargo.toml").is_file(),
        "{path:?} holds no package"
    );
    Some((root, path))
}

/// The suite's own command, as its scripts run it: every test target
/// with every feature, from the lock it was published with, built where
/// `.ci/rust-clients` built it; `threads` tests at once, `left_out` not
/// run.
fn suite_command(root: &Path, package: &Path, threads: usize, left_out: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(package)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .env("RUST_TEST_THREADS", threads.to_string())
        .args([
            "test",
            "--locked",
            "--all-features",
            "--tests",
            "--no-fail-fast",
        ])
        .args(["--", "--exact"]);
    for name in left_out {
        cmd.args(["--skip", name]);
    }
    cmd
}

/// Checks that a suite's `cargo test` passed every test binary and ran at
/// least `min` tests; returns how many passed.
fn expect_suite_ok(what: &str, run: ToolRun, min: usize) -> usize {
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
        "{what}'s suite against the store: {}\n{output}",
        run.status
    );
    assert!(
        passed >= min,
        "{what}'s suite ran {passed} tests, fewer than {min}:\n{output}"
    );
    passed
}

#[test]
fn async_memcached_passes_its_own_suite() {
    async_memcached_suite("async_memcached_passes_its_own_suite", false);
}

/// The same suite with every server it starts over TCP a follower of a
/// 3-server cluster started for it (tests/clients/memcached_as_store.sh
/// under `STORE_AS_FOLLOWER`); its Unix socket tests run on single
/// servers again.
#[test]
fn async_memcached_passes_its_own_suite_through_followers() {
    async_memcached_suite(
        "async_memcached_passes_its_own_suite_through_followers",
        true,
    );
}

fn async_memcached_suite(test: &str, followers: bool) {
    let Some((root, package)) = published(test, "async-memcached-0.9.0") else {
        return;
    };
    let wrapper =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/memcached_as_store.sh");
    // A cluster per test is four processes: two tests at a time on 2 cores.
    let threads = if followers { 2 } else { 4 };
    let mut cmd = suite_command(&root, &package, threads, &LEFT_OUT);
    cmd.env("MEMCACHED_BIN", &wrapper)
        .env("STORE_BIN", StoreServer::store_bin())
        .arg("--include-ignored");
    let what = if followers {
        cmd.env("STORE_AS_FOLLOWER", "1");
        "followers"
    } else {
        "single servers"
    };
    let passed = expect_suite_ok(
        &format!("async-memcached 0.9.0 against {what}"),
        run_tool(cmd, SUITE_TIMEOUT),
        SUITE_TESTS_MIN,
    );
    println!(
        "async-memcached 0.9.0's own suite against {what}: {passed} passed ({} left out)",
        LEFT_OUT.len()
    );
}

/// Replaces each `(fixed, ours)` in every Rust source under `dir`.
fn rewrite_sources(dir: &Path, names: &[(String, String)]) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("a file").path();
        if path.is_dir() {
            rewrite_sources(&path, names);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut text = std::fs::read_to_string(&path).expect("a source file");
            for (fixed, ours) in names {
                text = text.replace(fixed.as_str(), ours);
            }
            std::fs::write(&path, text).expect("write the source file");
        }
    }
}

/// Tests of memcache 0.21.0 left out.
const MEMCACHE_LEFT_OUT: [&str; 2] = [
    // UDP (memcached's -U): not served.
    "udp_test",
    // Its last step sends `mg <key> v c C<unique>` and expects the value
    // left out (`HD`) while the unique matches; neither memcached 1.6.18
    // nor the upstream protocol.txt followed here gives `C` a meaning on
    // mg (it is accepted and ignored, as memcached does).
    "exp_cas_flow",
];

/// Tests the memcache suite must run, at least (unit tests included).
const MEMCACHE_TESTS_MIN: usize = 167;

/// The `memcache` crate 0.21.0 (rust-memcache; crates.io), whose default
/// client speaks the binary protocol: its suite (binary, ASCII, the
/// experimental meta client, async, several servers at once, TLS, a Unix
/// socket) and its unit tests name fixed servers, localhost:12345 to 12349
/// plain, 12350 over TLS with the certificates in its tests/assets, 12351
/// also asking for a client certificate, and /tmp/memcached.sock and
/// memcached2.sock.
/// It runs from a copy whose tests name servers started here instead (the
/// TLS one with those certificates). Its harness, tests/setup_tests.sh,
/// builds memcached 1.6.45 from source; the suite is not run against
/// Debian's 1.6.18, whose meta commands lack flags it sends.
#[test]
fn memcache_crate_passes_its_own_suite() {
    let test = "memcache_crate_passes_its_own_suite";
    let Some(suite) = MemcacheSuite::copy(test) else {
        return;
    };
    let plain: Vec<StoreServer> = (0..5).map(|_| StoreServer::start(&[])).collect();
    let tls = StoreServer::start(&strs(&suite.tls_args()));
    let mut ports: Vec<u16> = plain.iter().map(|s| s.port).collect();
    ports.push(tls.port);
    suite.run("single servers", &ports);
}

/// The same suite with its main servers the followers of a 3-server
/// cluster: localhost:12345, which most of its tests use, and 12346 name
/// the two followers, 12347 the leader (12348 and 12349, which only its
/// tests of several servers use, single servers). Its TLS servers and Unix
/// sockets stay single servers: its certificate names `localhost` only,
/// where a follower checks the leader's against the leader's address
/// (tests/tls.rs forwards over TLS), and a server in a group serves TCP.
#[test]
fn memcache_crate_passes_its_own_suite_through_followers() {
    let test = "memcache_crate_passes_its_own_suite_through_followers";
    let Some(suite) = MemcacheSuite::copy(test) else {
        return;
    };
    let group = cluster::start_with(3, &[]);
    let (leader, follower, other) = cluster::leader_and_followers(&group);
    let singles: Vec<StoreServer> = (0..2).map(|_| StoreServer::start(&[])).collect();
    let tls = StoreServer::start(&strs(&suite.tls_args()));
    let mut ports = vec![follower.port(), other.port(), leader.port()];
    ports.extend(singles.iter().chain([&tls]).map(|s| s.port));
    suite.run("followers", &ports);
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A copy of the memcache crate's package, to name servers in.
struct MemcacheSuite {
    root: PathBuf,
    dir: tempfile::TempDir,
    package: PathBuf,
}

impl MemcacheSuite {
    /// `None` (skipped) without `STORE_RUST_CLIENTS`.
    fn copy(test: &str) -> Option<MemcacheSuite> {
        let (root, published) = published(test, "memcache-0.21.0")?;
        let dir = tempfile::tempdir().expect("temp dir");
        let package = dir.path().join("memcache-0.21.0");
        let copied = Command::new("cp")
            .arg("-r")
            .arg(&published)
            .arg(&package)
            .status()
            .expect("cp");
        assert!(copied.success(), "copy the package");
        Some(MemcacheSuite { root, dir, package })
    }

    fn asset(&self, name: &str) -> String {
        let path = self.package.join("tests/assets").join(name);
        path.to_str().expect("a UTF-8 path").to_string()
    }

    /// A server's flags for TLS with the suite's own certificate.
    fn tls_args(&self) -> Vec<String> {
        vec![
            "-Z".into(),
            "--ssl-chain-cert".into(),
            self.asset("localhost.crt"),
            "--ssl-key".into(),
            self.asset("localhost.key"),
        ]
    }

    /// Runs the suite with `ports` as its 12345 to 12350 (`what` names
    /// them); starts its 12351, which asks for a client certificate signed
    /// by the suite's own authority, and its Unix socket servers.
    fn run(&self, what: &str, ports: &[u16]) {
        assert_eq!(ports.len(), 6, "12345 to 12350");
        let mut client_certs = self.tls_args();
        client_certs.extend([
            "--ssl-verify-mode".into(),
            "2".into(),
            "--ssl-ca-cert".into(),
            self.asset("RUST_MEMCACHE_TEST_CERT.crt"),
        ]);
        let tls_client_certs = StoreServer::start(&strs(&client_certs));
        let mut names: Vec<(String, String)> = ports
            .iter()
            .chain([&tls_client_certs.port])
            .enumerate()
            .map(|(i, port)| {
                (
                    format!("localhost:{}", 12345 + i),
                    format!("localhost:{port}"),
                )
            })
            .collect();
        let mut unix = Vec::new();
        for name in ["memcached.sock", "memcached2.sock"] {
            let socket = self.dir.path().join(name);
            unix.push(start_unix_server(self.dir.path(), &socket, &[]));
            names.push((format!("/tmp/{name}"), socket.display().to_string()));
        }
        // Its unit tests (src/) name servers too, not only its tests/.
        rewrite_sources(&self.package.join("src"), &names);
        rewrite_sources(&self.package.join("tests"), &names);
        // One test at a time: its tests share these servers and some flush
        // them (test_cas flushes the server test_get_with_flags writes and
        // reads), which only a fast enough server gets away with in
        // parallel.
        let cmd = suite_command(&self.root, &self.package, 1, &MEMCACHE_LEFT_OUT);
        let passed = expect_suite_ok(
            &format!("memcache 0.21.0 against {what}"),
            run_tool(cmd, SUITE_TIMEOUT),
            MEMCACHE_TESTS_MIN,
        );
        println!(
            "memcache 0.21.0's own suite against {what}: {passed} passed ({} left out)",
            MEMCACHE_LEFT_OUT.len()
        );
    }
}
