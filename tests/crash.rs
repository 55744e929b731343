//! Crash test: writers send `set`s with distinct values as fast as they can
//! (one pipelined, one waiting for each reply), the server gets SIGKILL at a
//! random moment, it is restarted on the same data directory, and then every
//! key whose `STORED` was received must hold that value or a later one the
//! writer sent (never an older one, never bytes it did not send).
//!
//! Rounds come in chains on one data directory, so recovery also runs on top
//! of earlier recoveries. Half of the chains use `--snapshot-log-bytes 65536`
//! with larger values, so keystore writing and log compaction race with the
//! kill. The kill moment is random: after a random number of acknowledged
//! writes or a random time, whichever comes first. The seed is printed;
//! `STORE_CRASH_SEED` replays the choices (not the timing).

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHAINS: usize = 4;
const ROUNDS_PER_CHAIN: usize = 8;
const KEYS_PER_WRITER: usize = 16;
const PIPELINE_MAX: usize = 32;
/// Upper bound on how long writers run before the kill.
const WRITE_TIME_MAX: Duration = Duration::from_millis(800);
const SNAPSHOT_LOG_BYTES: &str = "65536";

#[derive(Default, Clone, Copy, Debug)]
struct KeyState {
    /// Highest sequence number whose STORED was received (or that was read back after a restart).
    acked: Option<u64>,
    /// Highest sequence number ever sent for this key.
    sent: Option<u64>,
}

type Ledger = Arc<Mutex<HashMap<String, KeyState>>>;

fn value_for(key: &str, seq: u64, big: bool) -> Vec<u8> {
    let pad = if big {
        100 + (seq * 7919) % 4000
    } else {
        8 + (seq * 31) % 200
    };
    let mut v = format!("{key}:{seq}:").into_bytes();
    v.extend(std::iter::repeat_n(b'a' + (seq % 26) as u8, pad as usize));
    v
}

/// Parses a value written by `value_for` back to its sequence number and checks its bytes.
fn seq_of(key: &str, value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let rest = text.strip_prefix(key)?.strip_prefix(':')?;
    let (seq, _) = rest.split_once(':')?;
    let seq: u64 = seq.parse().ok()?;
    let expect_small = value_for(key, seq, false);
    let expect_big = value_for(key, seq, true);
    (value == expect_small.as_slice() || value == expect_big.as_slice()).then_some(seq)
}

struct Writer {
    port: u16,
    keys: Vec<String>,
    pipelined: bool,
    big: bool,
    seq: Arc<AtomicU64>,
    acks: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    ledger: Ledger,
    seed: u64,
}

impl Writer {
    /// Runs until the connection breaks (the kill) or `stop`. Returns an
    /// error message for replies that are neither STORED nor a broken connection.
    fn run(self) -> Result<(), String> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return Ok(());
        };
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let n = if self.pipelined {
                rng.gen_range(1..=PIPELINE_MAX)
            } else {
                1
            };
            let mut batch = Vec::new();
            let mut sent = Vec::new();
            {
                let mut ledger = self.ledger.lock().expect("ledger lock");
                for _ in 0..n {
                    let key = &self.keys[rng.gen_range(0..self.keys.len())];
                    let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                    let v = value_for(key, seq, self.big);
                    batch.extend_from_slice(format!("set {key} 0 0 {}\r\n", v.len()).as_bytes());
                    batch.extend_from_slice(&v);
                    batch.extend_from_slice(b"\r\n");
                    let st = ledger.entry(key.clone()).or_default();
                    st.sent = Some(st.sent.map_or(seq, |s| s.max(seq)));
                    sent.push((key.clone(), seq));
                }
            }
            if s.write_all(&batch).is_err() {
                return Ok(());
            }
            for (key, seq) in sent {
                // Read one reply line.
                let line = loop {
                    if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                        break buf.drain(..=pos).collect::<Vec<u8>>();
                    }
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return Ok(()),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                if line != b"STORED\r\n" {
                    return Err(format!("set {key} (seq {seq}) got {}", esc(&line)));
                }
                let mut ledger = self.ledger.lock().expect("ledger lock");
                let st = ledger.entry(key).or_default();
                st.acked = Some(st.acked.map_or(seq, |a| a.max(seq)));
                self.acks.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Reads every key back and checks it against the ledger; then records what
/// was read as durable.
fn verify(server: &StoreServer, keys: &[String], ledger: &Ledger, round: &str) {
    let mut c = server.connect();
    let mut get = b"get".to_vec();
    for k in keys {
        get.extend_from_slice(b" ");
        get.extend_from_slice(k.as_bytes());
    }
    get.extend_from_slice(b"\r\n");
    c.send(&get);
    let mut found: HashMap<String, u64> = HashMap::new();
    loop {
        let line = c.read_line();
        if line == b"END\r\n" {
            break;
        }
        let text = String::from_utf8(line.clone()).unwrap_or_default();
        let parts: Vec<&str> = text.trim_end().split(' ').collect();
        assert!(
            parts.len() == 4 && parts[0] == "VALUE",
            "{round}: bad line {}",
            esc(&line)
        );
        let bytes: usize = parts[3].parse().expect("bytes");
        let data = c.read_n(bytes + 2, REPLY_TIMEOUT).expect("value data");
        let key = parts[1].to_string();
        let seq = seq_of(&key, &data[..bytes]).unwrap_or_else(|| {
            panic!(
                "{round}: key {key} holds bytes no writer sent: {}",
                esc(&data)
            )
        });
        found.insert(key, seq);
    }
    let mut ledger = ledger.lock().expect("ledger lock");
    for k in keys {
        let st = ledger.get(k).copied().unwrap_or_default();
        match (st.acked, found.get(k)) {
            (Some(a), None) => panic!("{round}: key {k} lost: STORED for seq {a} was received, key now missing"),
            (Some(a), Some(&got)) if got < a => panic!(
                "{round}: key {k} went back: STORED for seq {a} was received, it now holds seq {got}"
            ),
            _ => {}
        }
        if let Some(&got) = found.get(k) {
            let sent = st.sent.expect("a value exists, so it was sent");
            assert!(
                got <= sent,
                "{round}: key {k} holds seq {got}, never sent (max {sent})"
            );
            ledger.get_mut(k).expect("present").acked = Some(got);
        }
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_write() {
    let test = "sigkill_at_random_moments_loses_no_acknowledged_write";
    if target() == Target::Memcached {
        return skip(test, "memcached keeps nothing on disk");
    }
    let seed: u64 = std::env::var("STORE_CRASH_SEED")
        .ok()
        .map(|s| s.trim().parse().expect("STORE_CRASH_SEED must be a u64"))
        .unwrap_or_else(rand::random);
    println!("crash seed: {seed} (replay choices with STORE_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut total_acks = 0;
    for chain in 0..CHAINS {
        let compacting = chain % 2 == 1;
        let args: Vec<&str> = if compacting {
            vec!["--snapshot-log-bytes", SNAPSHOT_LOG_BYTES]
        } else {
            vec![]
        };
        let mut server = StoreServer::start(&args);
        let keys: Vec<Vec<String>> = (0..2)
            .map(|w| {
                (0..KEYS_PER_WRITER)
                    .map(|i| format!("c{chain}w{w}k{i}"))
                    .collect()
            })
            .collect();
        let all_keys: Vec<String> = keys.concat();
        let ledger: Ledger = Arc::default();
        let seq = Arc::new(AtomicU64::new(1));
        for round in 0..ROUNDS_PER_CHAIN {
            let name =
                format!("chain {chain} round {round} (seed {seed}, compacting {compacting})");
            let acks = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let handles: Vec<_> = (0..2)
                .map(|w| {
                    let writer = Writer {
                        port: server.port,
                        keys: keys[w].clone(),
                        pipelined: w == 0,
                        big: compacting,
                        seq: seq.clone(),
                        acks: acks.clone(),
                        stop: stop.clone(),
                        ledger: ledger.clone(),
                        seed: rng.gen(),
                    };
                    std::thread::spawn(move || writer.run())
                })
                .collect();
            let ack_target: u64 = rng.gen_range(1..3000);
            let time_limit =
                Duration::from_millis(rng.gen_range(30..WRITE_TIME_MAX.as_millis() as u64));
            // Waits for the random kill moment; this poll is the point of the test.
            poll_until(time_limit, || acks.load(Ordering::Relaxed) >= ack_target);
            server.kill9();
            stop.store(true, Ordering::Relaxed);
            for h in handles {
                if let Err(e) = h.join().expect("writer thread panicked") {
                    panic!("{name}: unexpected reply: {e}");
                }
            }
            total_acks += acks.load(Ordering::Relaxed);
            server
                .try_restart()
                .unwrap_or_else(|e| panic!("{name}: restart after SIGKILL failed: {e}"));
            verify(&server, &all_keys, &ledger, &name);
        }
        if compacting {
            // With 64 KiB between snapshots, the chain must have written a keystore.
            assert!(
                server.group_dir().join("keystore").exists(),
                "chain {chain}: no keystore after {ROUNDS_PER_CHAIN} rounds with --snapshot-log-bytes {SNAPSHOT_LOG_BYTES}"
            );
        }
    }
    println!(
        "crash: {} rounds, {total_acks} acknowledged sets, {:?}",
        CHAINS * ROUNDS_PER_CHAIN,
        started.elapsed()
    );
}

/// Two servers on one data directory would interleave their logs: the
/// second is refused with a message naming the directory, and once the
/// first is gone (even by SIGKILL) the directory can be taken again.
#[test]
fn second_server_on_a_data_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = StoreServer::start_in(dir.path(), &[]).expect("first server starts");
    let refused = StoreServer::start_in(dir.path(), &[])
        .err()
        .expect("a second server on the same directory is refused");
    assert!(
        refused.contains("is in use by another process"),
        "unexpected refusal: {refused}"
    );
    drop(first);
    StoreServer::start_in(dir.path(), &[]).expect("the directory is free once the first is gone");
}
