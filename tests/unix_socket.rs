//! memcached's `-s PATH` and `-a MASK`: a server alone serves its clients
//! on a Unix socket instead of TCP, the socket file has the permissions
//! asked for, `stats settings` names it, a socket file left behind by an
//! earlier run is replaced, and a server of a group refuses `-s`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use common::*;

const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `request` and reads `lines` reply lines.
fn exchange(stream: &mut UnixStream, request: &[u8], lines: usize) -> Vec<String> {
    stream.write_all(request).expect("send");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    (0..lines)
        .map(|_| {
            let mut line = String::new();
            reader.read_line(&mut line).expect("a reply line");
            line.trim_end().to_string()
        })
        .collect()
}

#[test]
fn a_server_alone_serves_a_unix_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("store.sock");
    // A socket file an earlier run left: replaced, not a bind error.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("a stale socket"));
    let server = start_unix_server(dir.path(), &socket, &["-a", "750"]);
    let meta = std::fs::metadata(&socket).expect("the socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o750);
    let mut stream = UnixStream::connect(&socket).expect("connect");
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    assert_eq!(
        exchange(&mut stream, b"set k 3 0 2\r\nhi\r\n", 1),
        ["STORED"]
    );
    assert_eq!(
        exchange(&mut stream, b"get k\r\n", 3),
        ["VALUE k 3 2", "hi", "END"]
    );
    assert_eq!(exchange(&mut stream, b"mg k v f\r\n", 2), ["VA 2 f3", "hi"]);
    stream.write_all(b"stats settings\r\n").unwrap();
    let mut settings = Vec::new();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("stats settings");
        if line == "END\r\n" {
            break;
        }
        settings.push(line.trim_end().to_string());
    }
    let shown = format!("STAT domain_socket {}", socket.display());
    assert!(settings.contains(&shown), "{settings:?}");
    assert!(
        settings.contains(&"STAT umask 750".to_string()),
        "{settings:?}"
    );
    drop(server);
}

#[test]
fn a_group_member_refuses_a_unix_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(StoreServer::store_bin());
    cmd.args(["addsrv", "--lb", "127.0.0.1:1", "-s"])
        .arg(dir.path().join("s.sock"));
    let run = run_tool(cmd, REPLY_TIMEOUT);
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("--unix-socket") && run.stderr.contains("--lb"),
        "{}",
        run.stderr
    );
}
