//! gomemcache (Debian, Go) runs the tests it ships against memcached
//! 1.6.18, a single server and a follower of a 3-server cluster.
//!
//! Its own binary, so that it runs alone: its touch test sets an item to
//! expire in 2 s and touches it after each of three 1 s sleeps, which a
//! one-second expiry clock (memcached's, and ours, which follows it) only
//! keeps alive when a touch lands before the second boundary after next.
//! Beside other clients' suites compiling and running on 2 cores, a touch
//! landed late against memcached itself (CI, stop 33).
//!
//! `.ci/run` installs it; locally a missing one is skipped (under CI it
//! fails).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster;
use common::*;

/// Where Debian's golang-github-bradfitz-gomemcache-dev puts the package.
const GOMEMCACHE: &str = "/usr/share/gocode/src/github.com/bradfitz/gomemcache/memcache";

/// gomemcache (Debian; Go) runs the tests it ships: `TestLocalhost` (the
/// whole client against a server at localhost:11211, which a copy of the
/// test names ours instead) against memcached 1.6.18, a server and a
/// follower, and `TestUnixSocket` (it starts `memcached -s SOCKET`
/// itself: here tests/clients/memcached_as_store.sh, found first in PATH,
/// starts the store's `-s`; memcached 1.6.18 would not start as root
/// without `-u`). A test that finds no server skips itself; here a skip
/// is a failure.
#[test]
fn gomemcache_passes_its_own_tests() {
    let test = "gomemcache_passes_its_own_tests";
    if !runs("go", &["version"]) || !Path::new(GOMEMCACHE).is_dir() {
        return skip(
            test,
            "go or gomemcache not found (apt-get install golang-go golang-github-bradfitz-gomemcache-dev)",
        );
    }
    let Some(mc) = Memcached::start_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let package = dir
        .path()
        .join("go/src/github.com/bradfitz/gomemcache/memcache");
    std::fs::create_dir_all(&package).expect("GOPATH");
    let shims = dir.path().join("bin");
    std::fs::create_dir_all(&shims).expect("shim dir");
    let wrapper =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/memcached_as_store.sh");
    std::os::unix::fs::symlink(&wrapper, shims.join("memcached")).expect("memcached shim");
    let fixed = r#"const testServer = "localhost:11211""#;
    let go_test = |port: u16, tests: &str| {
        for entry in std::fs::read_dir(GOMEMCACHE).expect("the package") {
            let path = entry.expect("a file").path();
            let text = std::fs::read_to_string(&path).expect("a source file");
            let text = if path.ends_with("memcache_test.go") {
                assert!(
                    text.contains(fixed),
                    "gomemcache's memcache_test.go changed"
                );
                text.replace(fixed, &format!(r#"const testServer = "127.0.0.1:{port}""#))
            } else {
                text
            };
            std::fs::write(package.join(path.file_name().unwrap()), text).expect("copy");
        }
        let path = format!(
            "{}:{}",
            shims.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("go");
        cmd.current_dir(&package)
            .env("GO111MODULE", "off")
            .env("GOPATH", dir.path().join("go"))
            .env("GOCACHE", dir.path().join("gocache"))
            .env("PATH", path)
            .env("STORE_BIN", StoreServer::store_bin())
            .env("STORE_DATA_ROOT", dir.path())
            .args(["test", "-v", "-count=1", "-run", tests, "."]);
        run_tool(cmd, SMOKE_TIMEOUT)
    };
    let expect_pass = |what: &str, port: u16, tests: &[&str]| {
        let only = format!("^({})$", tests.join("|"));
        let run = go_test(port, &only);
        let run = if lost_the_touch_race(&run) {
            println!(
                "gomemcache against {what}: a touch landed after the second boundary; once more"
            );
            go_test(port, &only)
        } else {
            run
        };
        let out = format!("{}\n{}", run.stdout, run.stderr);
        let passed = tests
            .iter()
            .all(|t| out.contains(&format!("--- PASS: {t} ")));
        assert!(
            run.status.success() && passed && !out.contains("--- SKIP"),
            "gomemcache's tests against {what}: {}\n{out}",
            run.status
        );
        println!("gomemcache against {what}: {} passed", tests.join(", "));
    };
    expect_pass("memcached 1.6.18", mc.port, &["TestLocalhost"]);
    let (_server, _cluster, [alone, follower]) = cluster::server_and_follower(&[]);
    expect_pass(
        "a server (and its -s)",
        alone.port(),
        &["TestLocalhost", "TestUnixSocket"],
    );
    expect_pass("a follower", follower.port(), &["TestLocalhost"]);
}

/// Whether a run failed only in the touch step's race with a one-second
/// clock (see the top of this file): every complaint is about touching
/// `foo`. A second such loss in a row still fails the test.
fn lost_the_touch_race(run: &ToolRun) -> bool {
    let out = format!("{}\n{}", run.stdout, run.stderr);
    let complaints: Vec<&str> = out
        .lines()
        .filter(|line| line.contains("_test.go:"))
        .collect();
    !run.status.success()
        && !complaints.is_empty()
        && complaints
            .iter()
            .all(|line| line.contains("touching") && line.contains("foo"))
}
