//! A server's restart through the public storage API: the state rebuilt from
//! the keystore plus the log records after it equals the state before the
//! restart, with the log compacted behind the keystore in between.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use data::command::{Command, Op, StoreMode};
use data::limits::ITEM_BYTES_DEFAULT;
use data::state::{Item, State};
use server::storage::{keystore_file, meta, Log, Meta};

/// Small segments so that compaction has whole segments to delete.
const SEGMENT_BYTES: u64 = 4096;

struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> TestDir {
        let path = std::env::temp_dir().join(format!("store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn command(n: u64) -> Command {
    let key = Bytes::from(format!("key-{}", n % 50));
    let op = if n % 10 == 9 {
        Op::Delete { key, cas_unique: 0 }
    } else {
        Op::Store {
            mode: StoreMode::Set,
            key,
            flags: n as u32,
            exptime: 0,
            data: Bytes::from(format!("value-{n}")),
            cas_unique: 0,
        }
    };
    Command {
        time_s: 1_700_000_000 + n,
        op,
        unique: None,
    }
}

fn sorted(state: &State) -> Vec<(Bytes, Item)> {
    let mut items: Vec<_> = state
        .items()
        .map(|i| (Bytes::copy_from_slice(i.key()), i.to_item()))
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items
}

/// What a server does on start: keystore, then the log records after it.
fn recover(data_dir: &Path) -> (State, Log) {
    let (mut state, _term) = keystore_file::load(data_dir, ITEM_BYTES_DEFAULT)
        .unwrap()
        .unwrap_or_else(|| (State::new(ITEM_BYTES_DEFAULT), 0));
    let (log, records) = Log::open(data_dir, SEGMENT_BYTES).unwrap();
    for record in records {
        if record.index > state.applied_index() {
            state.apply(record.index, &record.command);
        }
    }
    (state, log)
}

#[test]
fn keystore_plus_log_replay_rebuilds_the_state() {
    let dir = TestDir::new("storage-recovery");
    meta::store(
        dir.path(),
        &Meta {
            server_id: 1,
            current_term: 3,
        },
    )
    .unwrap();

    let (mut state, mut log) = recover(dir.path());
    for index in 1..=300 {
        log.append(3, index, &command(index)).unwrap();
        if index % 16 == 0 {
            log.sync().unwrap();
            // Apply only what is durable, as the commit pipeline does.
            for applied in state.applied_index() + 1..=index {
                state.apply(applied, &command(applied));
            }
        }
        if index == 200 {
            let items: Vec<(Bytes, Item)> = sorted(&state);
            keystore_file::write(
                dir.path(),
                state.applied_index(),
                3,
                state.flush_deadline_s(),
                state.clock_s(),
                state.config(),
                items.iter().map(|(k, v)| (k, v)),
            )
            .unwrap();
            let segments_before = log.segment_count();
            assert!(log.compact_through(state.applied_index()).unwrap() > 0);
            assert!(log.segment_count() < segments_before);
        }
    }
    log.sync().unwrap();
    for applied in state.applied_index() + 1..=300 {
        state.apply(applied, &command(applied));
    }
    let before = sorted(&state);
    drop(log);

    let (recovered, log) = recover(dir.path());
    assert_eq!(recovered.applied_index(), 300);
    assert_eq!(sorted(&recovered), before);
    assert_eq!((log.last_index(), log.last_term()), (300, 3));
    assert!(log.first_index().unwrap() > 1);
    assert_eq!(
        meta::load(dir.path()).unwrap(),
        Some(Meta {
            server_id: 1,
            current_term: 3
        })
    );
}
