//! Running `memccapable -a` (libmemcached-tools' protocol checker, ASCII
//! tests only) and reading its verdicts. It prints one line per test,
//! `<name> [pass]` or `[fail]`, and ends with "All tests passed"; callers
//! check those lines rather than trusting the exit status alone.

use std::process::Command;
use std::time::Duration;

use super::{memccapable_bin, run_tool, ToolRun};

/// Number of ASCII tests in libmemcached-tools' memccapable.
pub const ASCII_TESTS: usize = 27;
/// Bound on one whole run.
const MEMCAPABLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs memccapable against 127.0.0.1:`port` and returns its (test name,
/// verdict) pairs with the run itself.
pub fn run_memcapable(port: u16) -> (Vec<(String, String)>, ToolRun) {
    let bin = memccapable_bin().expect("checked by the caller");
    let mut cmd = Command::new(bin);
    // -t: per-I/O timeout in seconds (its default is 2), so a server that
    // does not answer makes one test fail instead of hanging the run, and a
    // forwarded write on a loaded 2-core machine is not taken for one.
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
