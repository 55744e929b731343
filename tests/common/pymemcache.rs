//! Running pymemcache 4.0.0's own integration tests (shipped inside the
//! installed package) against a server, and reading pytest's counts. Used by
//! the single-server and the cluster compatibility tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{run_tool, ToolRun};

/// A whole run takes a few seconds; a hang (a reply that never comes)
/// fails within this.
pub const PYTEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct Counts {
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    pub errors: u32,
}

pub fn pymemcache_test_file(py: &Path) -> PathBuf {
    let out = Command::new(py)
        .args([
            "-c",
            "import pymemcache, os; print(os.path.dirname(pymemcache.__file__))",
        ])
        .output()
        .expect("run python3");
    assert!(out.status.success(), "cannot locate pymemcache");
    let dir = String::from_utf8(out.stdout).expect("utf-8 path");
    let file = PathBuf::from(dir.trim())
        .join("test")
        .join("test_integration.py");
    assert!(
        file.is_file(),
        "{} missing: is pymemcache 4.0.0 installed with its tests?",
        file.display()
    );
    file
}

/// Parses pytest's final summary line, e.g. "100 passed, 3 skipped in 1.62s".
pub fn parse_summary(stdout: &str) -> Option<Counts> {
    let line = stdout.lines().rev().find(|l| {
        l.contains(" in ") && (l.contains("passed") || l.contains("failed") || l.contains("error"))
    })?;
    let line = line.trim().trim_matches('=').trim();
    let body = line.split(" in ").next()?;
    let mut c = Counts::default();
    for part in body.split(", ") {
        let mut it = part.split_whitespace();
        let n: u32 = it.next()?.parse().ok()?;
        match it.next()? {
            "passed" => c.passed = n,
            "failed" => c.failed = n,
            "skipped" => c.skipped = n,
            "error" | "errors" => c.errors = n,
            _ => {}
        }
    }
    Some(c)
}

pub fn run_suite(py: &Path, file: &Path, port: u16) -> (Counts, ToolRun) {
    let work = tempfile::Builder::new()
        .prefix("pymemcache-suite")
        .tempdir()
        .expect("tempdir");
    let ini = work.path().join("pytest.ini");
    std::fs::write(
        &ini,
        "[pytest]\nmarkers =\n    integration: needs a running memcached-compatible server\n",
    )
    .expect("write pytest.ini");
    let mut cmd = Command::new(py);
    cmd.current_dir(work.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("-m")
        .arg("pytest")
        .arg("-c")
        .arg(&ini)
        .arg("--rootdir")
        .arg(work.path())
        .args(["-p", "no:cacheprovider"])
        .arg(file)
        .args(["--server", "127.0.0.1", "--port", &port.to_string()])
        .args(["-m", "integration", "-q", "-rfEs", "--tb=short"]);
    let run = run_tool(cmd, PYTEST_TIMEOUT);
    let counts = parse_summary(&run.stdout).unwrap_or_else(|| {
        panic!(
            "no pytest summary line\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        )
    });
    (counts, run)
}

pub fn failure_lines(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| l.starts_with("FAILED") || l.starts_with("ERROR"))
        .collect::<Vec<_>>()
        .join("\n")
}
