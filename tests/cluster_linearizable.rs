//! Linearizability of a real cluster through a failover: concurrent clients,
//! each talking to a random server of a 3-server `store up` cluster, run
//! gets, sets, adds, cas, incr and deletes on a few keys while the leader is
//! killed and restarted; the recorded history goes to the `check` crate's
//! checker. Replies that are errors or never come are recorded as pending
//! (they may or may not have taken effect).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use check::{Call, ClientId, History, Op, Ret, Verdict};
use common::cluster::{leader, start};
use common::poll_until;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use store::nemesis::workload::{exchange, Outcome};

const CLIENTS: u32 = 4;
const KEYS: [&str; 3] = ["lin0", "lin1", "lin2"];
/// How long clients run before, and after, the leader is killed.
const PHASE: Duration = Duration::from_millis(1500);
const REPLY_TIMEOUT: Duration = Duration::from_secs(4);
/// Pause after an error, so one client does not pile up pending ops.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Ops one client runs in each phase (before the kill, through the
/// failover, after the restart) at most, so a fast cluster's history stays
/// within what the checker searches (`check::Limits::DEFAULT`: 10,000 ops
/// per key) whatever the machine's speed.
const OPS_PER_PHASE_MAX: u64 = 1_500;
/// How often a client that ran its phase's ops looks for the next phase.
const PHASE_POLL: Duration = Duration::from_millis(5);

struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
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
    phase: Arc<AtomicU32>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ u64::from(id));
    let mut stream = None;
    let mut seen_unique = [1u64; KEYS.len()];
    let mut n = 0u64;
    let (mut my_phase, mut in_phase) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let now_phase = phase.load(Ordering::Relaxed);
        if now_phase != my_phase {
            (my_phase, in_phase) = (now_phase, 0);
        }
        if in_phase >= OPS_PER_PHASE_MAX {
            std::thread::sleep(PHASE_POLL);
            continue;
        }
        in_phase += 1;
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
        // The nemesis's request encoding and reply sorting (src/nemesis/).
        let outcome = exchange(conn, KEYS[k], &call);
        let completed_ns = recorder.now_ns();
        let op = match outcome {
            Outcome::Ok(ret) => {
                if let Ret::HitCas { unique, .. } = &ret {
                    seen_unique[k] = *unique;
                }
                Op::completed(ClientId(id), KEYS[k], call, invoked_ns, completed_ns, ret)
            }
            // Certainly not executed: it is not part of the history.
            Outcome::Fail(_) => continue,
            Outcome::Unknown(_) => {
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
    let phase = Arc::new(AtomicU32::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (servers, recorder, stop, phase) = (
                cluster.servers.clone(),
                recorder.clone(),
                stop.clone(),
                phase.clone(),
            );
            std::thread::spawn(move || client(id, seed, servers, recorder, stop, phase))
        })
        .collect();

    std::thread::sleep(PHASE);
    let old = leader(cluster.lb).expect("a leader");
    let name = cluster
        .name_of(old)
        .expect("the leader is one of the servers");
    cluster.kill(&name);
    phase.store(1, Ordering::Relaxed);
    assert!(
        poll_until(Duration::from_secs(20), || leader(cluster.lb)
            .is_some_and(|l| l != old)),
        "no new leader"
    );
    cluster.restart(&name).expect("restart the old leader");
    phase.store(2, Ordering::Relaxed);
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
