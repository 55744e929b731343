//! A data directory written before replica groups had their own directory
//! (the log, keystore and meta at its top) is moved into `groups/0/` on
//! start, and every key is found after it (issue 14, Deliver 4).

mod common;

use std::time::Duration;

use common::*;

const KEYS: usize = 2_000;
const VALUE_BYTES: usize = 200;

fn value(i: usize) -> String {
    format!("{i:0>width$}", width = VALUE_BYTES)
}

#[test]
fn a_data_directory_in_the_layout_before_groups_is_migrated_and_keeps_every_key() {
    if target() != Target::Store {
        return skip("data_layout", "store's own data directory");
    }
    // Small keystore interval: the directory holds a keystore file and log.
    let mut server = StoreServer::start(&["--snapshot-log-bytes", "65536"]);
    let mut conn = server.connect();
    for i in 0..KEYS {
        let v = value(i);
        conn.request(
            format!("set key{i} 0 0 {}\r\n{v}\r\n", v.len()).as_bytes(),
            b"STORED\r\n",
        );
    }
    drop(conn);
    assert!(server.sigterm(Duration::from_secs(10)).success());
    let group = server.group_dir();
    assert!(group.join("keystore").exists(), "no keystore file written");
    assert!(group.join("log").is_dir());

    // Today's layout before groups: the group's files at the top.
    let top = server.data_dir().to_path_buf();
    for entry in std::fs::read_dir(&group).expect("group directory") {
        let entry = entry.expect("entry");
        std::fs::rename(entry.path(), top.join(entry.file_name())).expect("move up");
    }
    std::fs::remove_dir_all(top.join("groups")).expect("remove groups");
    assert!(top.join("log").is_dir() && top.join("keystore").exists());

    server.restart();
    assert!(group.join("keystore").exists(), "not migrated");
    assert!(!top.join("log").exists() && !top.join("keystore").exists());
    let mut conn = server.connect();
    for i in 0..KEYS {
        let v = value(i);
        conn.request(
            format!("get key{i}\r\n").as_bytes(),
            format!("VALUE key{i} 0 {}\r\n{v}\r\nEND\r\n", v.len()).as_bytes(),
        );
    }
}
