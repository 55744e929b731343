//! The `store` command refuses settings that cannot work before it starts
//! anything: a failing exit code and a message naming the flags.

use std::process::{Command, Output};

fn store(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_store"))
        .args(args)
        .output()
        .expect("run store")
}

fn refused(output: &Output, wanted: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted; stderr:\n{stderr}");
    assert!(
        stderr.contains(wanted),
        "stderr lacks {wanted:?}:\n{stderr}"
    );
}

#[test]
fn an_election_timeout_shorter_than_a_promise_hold_is_refused() {
    // A follower holds its promise for 3 heartbeats: 3 × 500 > 1000.
    let rule = "--election-timeout-ms at least 3 times it (got 500 and 1000)";
    refused(
        &store(&["addsrv", "--lb", "127.0.0.1:1", "--heartbeat-ms", "500"]),
        rule,
    );
    refused(&store(&["addlb", "--heartbeat-ms", "500"]), rule);
    refused(&store(&["up", "--heartbeat-ms", "500"]), rule);
    refused(
        &store(&["addlb", "--heartbeat-ms", "0"]),
        "--heartbeat-ms must be at least 1",
    );
}

#[test]
fn item_size_and_thread_limits_are_checked() {
    refused(
        &store(&["addsrv", "-I", "0"]),
        "-I must be between 1 byte and",
    );
    refused(
        &store(&["addsrv", "-t", "0"]),
        "-t and -c must be at least 1",
    );
}
