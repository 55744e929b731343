//! Linearizability of a real cluster through a failover: concurrent clients,
//! each talking to a random server of a 3-server `store up` cluster, run
//! gets, sets, adds, cas, incr and deletes on a few keys while the leader is
//! killed and restarted; the recorded history goes to the `check` crate's
//! checker. Replies that are errors or never come are recorded as pending
//! (they may or may not have taken effect).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use check::{Call, ClientId, History, Op, Ret, Verdict};
use common::cluster::{leader, start};
use common::poll_until;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CLIENTS: u32 = 4;
const KEYS: [&str; 3] = ["lin0", "lin1", "lin2"];
/// How long clients run before, and after, the leader is killed.
const PHASE: Duration = Duration::from_millis(1500);
const REPLY_TIMEOUT: Duration = Duration::from_secs(4);
/// Pause after an error, so one client does not pile up pending ops.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);

struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// The request bytes for `call` on `key`.
fn encode(key: &str, call: &Call) -> Vec<u8> {
    let store = |verb: &str, value: &[u8], cas: Option<u64>| {
        let mut out = match cas {
            Some(unique) => format!("{verb} {key} 0 0 {} {unique}\r\n", value.len()),
            None => format!("{verb} {key} 0 0 {}\r\n", value.len()),
        }
        .into_bytes();
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
        out
    };
    match call {
        Call::Get => format!("get {key}\r\n").into_bytes(),
        Call::Gets => format!("gets {key}\r\n").into_bytes(),
        Call::Set(v) => store("set", v, None),
        Call::Add(v) => store("add", v, None),
        Call::Cas { value, unique } => store("cas", value, Some(*unique)),
        Call::Incr(d) => format!("incr {key} {d}\r\n").into_bytes(),
        Call::Decr(d) => format!("decr {key} {d}\r\n").into_bytes(),
        Call::Delete => format!("delete {key}\r\n").into_bytes(),
    }
}

/// Reads one reply and turns it into what the client observed; `None` for
/// an error line, a timeout or a broken connection (outcome unknown).
fn read_reply(stream: &mut TcpStream, call: &Call) -> Option<Ret> {
    let retrieval = matches!(call, Call::Get | Call::Gets);
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let complete = if retrieval {
            reply.ends_with(b"END\r\n")
                || (reply.starts_with(b"SERVER_ERROR") && reply.ends_with(b"\r\n"))
        } else {
            reply.ends_with(b"\r\n")
        };
        if complete {
            break;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&reply).to_string();
    let line = text.lines().next().unwrap_or_default();
    Some(match line {
        "END" => Ret::Miss,
        "STORED" => Ret::Stored,
        "NOT_STORED" => Ret::NotStored,
        "EXISTS" => Ret::Exists,
        "NOT_FOUND" => Ret::NotFound,
        "DELETED" => Ret::Deleted,
        "CLIENT_ERROR cannot increment or decrement non-numeric value" => Ret::NonNumeric,
        l if l.starts_with("VALUE ") => {
            let fields: Vec<&str> = l.split(' ').collect();
            let len: usize = fields.get(3)?.parse().ok()?;
            let start = l.len() + 2;
            let value = reply.get(start..start + len)?.to_vec();
            match call {
                Call::Gets => Ret::HitCas {
                    value,
                    unique: fields.get(4)?.parse().ok()?,
                },
                _ => Ret::Hit(value),
            }
        }
        l => Ret::Number(l.parse().ok()?),
    })
}

fn connect(servers: &[SocketAddr], rng: &mut StdRng) -> Option<TcpStream> {
    let addr = servers[rng.gen_range(0..servers.len())];
    let stream = TcpStream::connect_timeout(&addr, REPLY_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).ok()?;
    let _ = stream.set_nodelay(true);
    Some(stream)
}

fn client(
    id: u32,
    seed: u64,
    servers: Vec<SocketAddr>,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ u64::from(id));
    let mut stream = None;
    let mut seen_unique = [1u64; KEYS.len()];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if stream.is_none() {
            stream = connect(&servers, &mut rng);
            if stream.is_none() {
                std::thread::sleep(ERROR_BACKOFF);
                continue;
            }
        }
        n += 1;
        let k = rng.gen_range(0..KEYS.len());
        // Values are unique decimal numbers, so incr has counters to work on
        // and every read names the write it saw.
        let value = (u64::from(id) * 1_000_000_000 + n).to_string().into_bytes();
        let call = match rng.gen_range(0..10) {
            0..=2 => Call::Gets,
            3 => Call::Get,
            4 | 5 => Call::Set(value),
            6 => Call::Add(value),
            7 => Call::Cas {
                value,
                unique: seen_unique[k],
            },
            8 => Call::Incr(rng.gen_range(1..5)),
            _ => Call::Delete,
        };
        let conn = stream.as_mut().expect("connected above");
        let invoked_ns = recorder.now_ns();
        let sent = conn.write_all(&encode(KEYS[k], &call)).is_ok();
        let ret = if sent { read_reply(conn, &call) } else { None };
        let completed_ns = recorder.now_ns();
        let op = match ret {
            Some(ret) => {
                if let Ret::HitCas { unique, .. } = &ret {
                    seen_unique[k] = *unique;
                }
                Op::completed(ClientId(id), KEYS[k], call, invoked_ns, completed_ns, ret)
            }
            None => {
                // The connection may be out of step: start a fresh one.
                stream = None;
                std::thread::sleep(ERROR_BACKOFF);
                Op::pending(ClientId(id), KEYS[k], call, invoked_ns)
            }
        };
        recorder.ops.lock().expect("no panics while held").push(op);
    }
}

#[test]
fn history_through_a_failover_is_linearizable() {
    let mut cluster = start(3);
    assert!(poll_until(Duration::from_secs(20), || leader(cluster.lb).is_some()));
    let seed: u64 = std::env::var("STORE_LIN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("linearizability seed {seed} (replay with STORE_LIN_SEED={seed})");
    let recorder = Arc::new(Recorder {
        start: Instant::now(),
        ops: Mutex::new(Vec::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (servers, recorder, stop) =
                (cluster.servers.clone(), recorder.clone(), stop.clone());
            std::thread::spawn(move || client(id, seed, servers, recorder, stop))
        })
        .collect();

    std::thread::sleep(PHASE);
    let old = leader(cluster.lb).expect("a leader");
    let name = cluster
        .name_of(old)
        .expect("the leader is one of the servers");
    cluster.kill(&name);
    assert!(
        poll_until(Duration::from_secs(20), || leader(cluster.lb)
            .is_some_and(|l| l != old)),
        "no new leader"
    );
    cluster.restart(&name).expect("restart the old leader");
    std::thread::sleep(PHASE);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("client thread");
    }

    let ops = std::mem::take(&mut *recorder.ops.lock().expect("no panics while held"));
    let total = ops.len();
    let pending = ops.iter().filter(|op| op.is_pending()).count();
    let history = History::new(ops).expect("well-formed history");
    let report = check::check_with(&history, &check::Limits::DEFAULT);
    eprintln!(
        "{total} ops ({pending} pending) on {} keys: {} search steps; verdict {:?}",
        report.keys,
        report.steps_total,
        matches!(report.verdict, Verdict::Linearizable)
    );
    match report.verdict {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable { key, witness } => {
            panic!(
                "not linearizable on {:?} (seed {seed}):\n{}",
                String::from_utf8_lossy(&key),
                witness.explanation
            )
        }
        Verdict::Unknown { key, reason } => {
            panic!(
                "checker gave up on {:?} (seed {seed}): {reason:?}",
                String::from_utf8_lossy(&key)
            )
        }
    }
    assert!(
        total - pending > 500,
        "too few completed ops to mean anything: {total}, {pending} pending"
    );
}
