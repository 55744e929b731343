//! A replica group must look like one memcached from every server, and must
//! take a server added and removed at run time.
//!
//! - pymemcache 4.0.0's own integration tests run against each server of a
//!   3-server cluster (the leader and both followers, which forward to the
//!   leader) and must give the same pass/skip/fail counts as against the
//!   system memcached (1.6.18: 100 passed, 3 skipped). The suite is invoked
//!   exactly as in `tests/pymemcache_suite.rs` (see that file for why each
//!   pytest flag is there); the helpers are copied here because a test file
//!   cannot import another.
//! - A 4th `store addsrv` started by hand against a running cluster joins
//!   (learner, then voter), holds the data written before it came, and
//!   `store remove-server <id>` takes it out again.
//!
//! Every process is stopped when the test ends, pass or fail: the cluster's
//! by `Cluster`'s Drop, the extra server's by `ExtraServer`'s Drop.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cluster::{lb_status, leader, request, server_stats, start};
use common::pymemcache::{failure_lines, pymemcache_test_file, run_suite};
use common::{free_port, poll_until, python_with_pymemcache, skip};
use store::status;
use store::up::Cluster;

/// One pytest run of the whole suite (about 2 s against memcached or a
/// cluster on loopback). A server that never answers one request hangs the
/// suite, since pymemcache's tests set no socket timeout: this bounds it.
/// Joining, catching up, being removed: each well under this on loopback.
const DEADLINE: Duration = Duration::from_secs(30);

/// The LB's id for the server whose memcached address is `addr`, and that
/// server's fields.
fn lb_row(
    status: &status::ClusterStatus,
    addr: SocketAddr,
) -> Option<(String, std::collections::BTreeMap<String, String>)> {
    status
        .row_of(addr)
        .map(|(id, fields)| (id.clone(), fields.clone()))
}

fn server_stat(addr: SocketAddr, name: &str) -> Option<String> {
    server_stats(addr).remove(name)
}

// ---- pymemcache's suite, as tests/pymemcache_suite.rs runs it ----

#[test]
fn pymemcache_suite_passes_on_every_server_of_a_cluster() {
    let test = "pymemcache_suite_passes_on_every_server_of_a_cluster";
    let Some(py) = python_with_pymemcache() else {
        return skip(
            test,
            "python3 with pymemcache and pytest not found (pip install pymemcache==4.0.0 pytest)",
        );
    };
    let file = pymemcache_test_file(&py);

    let reference = match common::Memcached::start_or_skip(test) {
        Some(mc) => {
            let (counts, run) = run_suite(&py, &file, mc.port);
            assert!(
                counts.failed == 0 && counts.errors == 0 && counts.passed > 0,
                "pymemcache suite fails against memcached itself: {counts:?}\n{}",
                run.stdout
            );
            eprintln!("pymemcache suite against memcached: {counts:?}");
            Some(counts)
        }
        None => None,
    };

    let test_cluster = start(3);
    let cluster = &test_cluster.cluster;
    assert!(
        poll_until(DEADLINE, || leader(cluster.lb).is_some()),
        "no leader named; status: {:?}",
        lb_status(cluster.lb)
    );
    let mut results = Vec::new();
    for server in &cluster.servers {
        let role = lb_row(&lb_status(cluster.lb), *server)
            .and_then(|(_, fields)| fields.get("role").cloned())
            .unwrap_or_else(|| "unknown".into());
        // Said before the run: if it hangs, the timeout's panic names only
        // the port.
        eprintln!("running pymemcache's suite against {server} ({role})");
        let (counts, run) = run_suite(&py, &file, server.port());
        eprintln!("pymemcache suite against {server} ({role}): {counts:?}");
        results.push((*server, role, counts, run));
    }
    for (server, role, counts, run) in &results {
        let failures = failure_lines(&run.stdout);
        match reference {
            Some(reference) => assert_eq!(
                *counts, reference,
                "pymemcache suite: {server} ({role}) {counts:?} vs memcached {reference:?}\n\
                 {failures}\n\nfull output:\n{}",
                run.stdout
            ),
            None => assert!(
                counts.failed == 0 && counts.errors == 0 && counts.passed > 0,
                "pymemcache suite against {server} ({role}): {counts:?}\n{failures}\n\n\
                 full output:\n{}",
                run.stdout
            ),
        }
    }
}

// ---- a server added and removed at run time ----

/// A `store addsrv` started by the test, outside `Cluster`; SIGKILLed and
/// reaped when dropped.
struct ExtraServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ExtraServer {
    fn start(cluster: &Cluster, data_dir: &Path, log: PathBuf) -> ExtraServer {
        let port = free_port();
        let out = std::fs::File::create(&log).expect("create the server's log");
        let err = out.try_clone().expect("clone the log file");
        let cluster_file = data_dir.join("lb").join("cluster");
        let child = Command::new(env!("CARGO_BIN_EXE_store"))
            .args(["addsrv", "-p", &port.to_string(), "--data-dir"])
            .arg(data_dir.join("server-4"))
            .args(["--lb", &cluster.lb.to_string(), "--cluster-file"])
            .arg(&cluster_file)
            .args(["--heartbeat-ms", "100", "--election-timeout-ms", "1000"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn store addsrv");
        ExtraServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        }
    }

    fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

impl Drop for ExtraServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `store remove-server <id> --lb <lb> --cluster-file <file>`; its
/// exit code, stdout and stderr.
fn remove_server(lb: &str, id: &str, cluster_file: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_store"))
        .args(["remove-server", id, "--lb", lb, "--cluster-file"])
        .arg(cluster_file)
        .stdin(Stdio::null())
        .output()
        .expect("run store remove-server");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_server_added_at_run_time_joins_and_can_be_removed() {
    let test_cluster = start(3);
    let cluster = &test_cluster.cluster;
    let mut leader_addr = None;
    assert!(
        poll_until(DEADLINE, || {
            leader_addr = leader(cluster.lb);
            leader_addr.is_some()
        }),
        "no leader named; status: {:?}",
        lb_status(cluster.lb)
    );
    let leader_addr = leader_addr.expect("polled above");
    for i in 0..20 {
        let reply = request(
            leader_addr,
            format!("set before{i} 0 0 6\r\nvalue{}\r\n", i % 10).as_bytes(),
            b"\r\n",
        );
        assert_eq!(reply.as_deref(), Ok(&b"STORED\r\n"[..]), "set before{i}");
    }
    let commit: u64 = server_stat(leader_addr, "repl_commit_index")
        .and_then(|v| v.parse().ok())
        .expect("the leader reports repl_commit_index");

    let extra = ExtraServer::start(
        cluster,
        test_cluster.dir.path(),
        test_cluster.dir.path().join("server-4.log"),
    );
    // Learner first (it may pass too fast to be seen), then a voter, which
    // the LB shows as a follower.
    let mut roles_seen: Vec<String> = Vec::new();
    let mut id = None;
    let joined = poll_until(DEADLINE, || {
        let Some((row_id, fields)) = lb_row(&lb_status(cluster.lb), extra.addr) else {
            return false;
        };
        id = Some(row_id);
        let role = fields.get("role").cloned().unwrap_or_default();
        if roles_seen.last() != Some(&role) {
            roles_seen.push(role.clone());
        }
        role == "follower"
    });
    assert!(
        joined,
        "the 4th server did not become a follower; roles seen {roles_seen:?}; status {:?}\nlog:\n{}",
        lb_status(cluster.lb),
        extra.log_text()
    );
    let id = id.expect("set when joined");
    eprintln!(
        "4th server {} (id {id}): roles seen {roles_seen:?}",
        extra.addr
    );
    assert!(
        roles_seen
            .iter()
            .all(|r| ["unknown", "learner", "follower"].contains(&r.as_str())),
        "the 4th server went through {roles_seen:?}"
    );
    assert_eq!(
        server_stat(extra.addr, "repl_role").as_deref(),
        Some("follower"),
        "the 4th server's own view of its role"
    );

    // It holds the data written before it came (its own applied index,
    // not only the leader's answer relayed), and serves it.
    assert!(
        poll_until(DEADLINE, || {
            server_stat(extra.addr, "repl_applied_index").and_then(|v| v.parse::<u64>().ok())
                >= Some(commit)
        }),
        "the 4th server did not apply up to {commit}: applied {:?}",
        server_stat(extra.addr, "repl_applied_index")
    );
    for i in [0, 7, 19] {
        assert_eq!(
            request(
                extra.addr,
                format!("get before{i}\r\n").as_bytes(),
                b"END\r\n"
            )
            .as_deref(),
            Ok(format!("VALUE before{i} 0 6\r\nvalue{}\r\nEND\r\n", i % 10).as_bytes()),
            "before{i} through the 4th server"
        );
    }
    // A write through it is acknowledged by a group of four.
    assert_eq!(
        request(extra.addr, b"set via4 0 0 1\r\nx\r\n", b"\r\n").as_deref(),
        Ok(&b"STORED\r\n"[..])
    );

    // Removing a server changes the cluster: anyone who reaches the LB's
    // port may ask, but without the cluster secret's proof it is refused
    // and counted, and the server stays a voter.
    let refused = request(
        cluster.lb,
        format!("remove-server {id}\r\n").as_bytes(),
        b"\r\n",
    )
    .expect("an answer");
    assert!(
        refused.starts_with(b"CLIENT_ERROR unauthenticated: "),
        "remove-server without a proof: {:?}",
        String::from_utf8_lossy(&refused)
    );
    let cluster_file = test_cluster.dir.path().join("lb").join("cluster");
    let other_file = test_cluster.dir.path().join("other-cluster");
    // The same cluster id with another secret.
    let text = std::fs::read_to_string(&cluster_file).expect("the cluster file");
    let mut other = data::cluster_file::ClusterFile::parse(&text).expect("a cluster file");
    other.secret[0] ^= 1;
    std::fs::write(&other_file, other.format()).expect("write another cluster file");
    let lb = cluster.lb.to_string();
    let (code, stdout, stderr) = remove_server(&lb, &id, &other_file);
    assert_eq!(
        code,
        Some(2),
        "remove-server with another secret: {stdout} {stderr}"
    );
    assert!(stderr.contains("refused the proof"), "{stderr}");
    let status = lb_status(cluster.lb);
    assert_eq!(
        status.cluster.get("admin_refused").map(String::as_str),
        Some("2"),
        "{status:?}"
    );
    assert_eq!(
        lb_row(&status, extra.addr).and_then(|(_, row)| row.get("role").cloned()),
        Some("follower".to_string()),
        "the 4th server after refused removals: {status:?}"
    );

    // The CLI's exit codes: 1 for an id the LB does not know, 2 when the
    // LB cannot be reached.
    let (code, stdout, stderr) = remove_server(&lb, "1", &cluster_file);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(1), "NOT_FOUND\n"),
        "remove-server of an unknown id; stderr {stderr}"
    );
    let nobody = format!("127.0.0.1:{}", free_port());
    let (code, _, stderr) = remove_server(&nobody, &id, &cluster_file);
    assert_eq!(code, Some(2), "remove-server with no LB; stderr {stderr}");

    // Every tool takes a list of LBs (`--lb A,B`) and skips one that does
    // not answer: status, the client, and remove-server below.
    let listed = format!("{nobody},{lb}");
    let status = Command::new(env!("CARGO_BIN_EXE_store"))
        .args(["status", "--json", "--lb", &listed])
        .output()
        .expect("run store status");
    assert!(
        status.status.success() && String::from_utf8_lossy(&status.stdout).contains(&id),
        "store status --lb {listed}: {status:?}"
    );
    let client = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_client"))
            .args(["--lb", &listed])
            .args(args)
            .output()
            .expect("run client")
    };
    let set = client(&["set", "listed", "yes"]);
    assert_eq!(set.stdout, b"STORED\n", "client --lb {listed} set: {set:?}");
    let get = client(&["get", "listed"]);
    assert_eq!(get.stdout, b"yes", "client --lb {listed} get: {get:?}");

    let (code, stdout, stderr) = remove_server(&listed, &id, &cluster_file);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "OK\n"),
        "remove-server {id}; stderr {stderr}"
    );
    // The LB forgets it once the leader's configuration no longer has it;
    // until then it shows it as removing.
    let mut last = None;
    let gone = poll_until(DEADLINE, || {
        let status = lb_status(cluster.lb);
        last = status.servers.get(&id).cloned();
        status.cluster.contains_key("term") && last.is_none()
    });
    assert!(
        gone,
        "the LB still lists the 4th server: {last:?}; status {:?}",
        lb_status(cluster.lb)
    );
    let servers = request(cluster.lb, b"get-servers\r\n", b"end\r\n").expect("get-servers");
    assert!(
        !String::from_utf8_lossy(&servers).contains(&extra.addr.to_string()),
        "get-servers still hands out the removed server: {:?}",
        String::from_utf8_lossy(&servers)
    );
    let (code, stdout, _) = remove_server(&lb, &id, &cluster_file);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(1), "NOT_FOUND\n"),
        "a second remove-server {id}"
    );

    // The remaining three still commit writes.
    let mut leader_now = None;
    assert!(poll_until(DEADLINE, || {
        leader_now = leader(cluster.lb);
        leader_now.is_some_and(|addr| {
            request(addr, b"set after-removal 0 0 1\r\ny\r\n", b"\r\n").as_deref()
                == Ok(&b"STORED\r\n"[..])
        })
    }));
    drop(extra);
}
