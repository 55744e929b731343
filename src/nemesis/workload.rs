//! The clients and the history they record: concurrent threads, each with
//! one blocking memcached connection to a random server, running get, gets,
//! set, add, cas, incr, decr and delete on a small key set, and recording
//! every op with its invocation and completion times on one shared clock.
//!
//! Every write carries a value no other write uses (a decimal number, so
//! that incr and decr have counters to work on), so every read names the
//! write it saw. Replies are sorted three ways:
//!
//! - ok: a reply in memcached's vocabulary; recorded as completed.
//! - fail: an error that says the request was not executed (`SERVER_ERROR
//!   no leader available, retry`, `... leader not ready, retry`), or any
//!   error to a read; left out of the history, as the `check` crate asks.
//! - unknown: a timeout, a broken connection, `SERVER_ERROR leader changed,
//!   outcome unknown` or any other error to a write; recorded as pending.
//!
//! It owns the client connections; it knows nothing about faults.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use check::{Call, ClientId, Op, Ret};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Pause after a failed or unknown op, so a client does not spin through
/// errors while the cluster has no leader.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// A reply longer than this is not one our small values can produce.
const REPLY_BYTES_MAX: usize = 64 * 1024;
/// Values of different writes of one client are this far apart, so a run of
/// incr/decr (deltas below [`DELTA_MAX`]) cannot reach another write's value.
const VALUE_STRIDE: u64 = 1_000_000;
/// incr and decr deltas are in 1..DELTA_MAX.
const DELTA_MAX: u64 = 5;
/// Writes one client makes at most (its values must stay distinct from the
/// next client's): 10^6 writes per client in one run.
const WRITES_PER_CLIENT_MAX: u64 = 1_000_000;

/// The lines that promise a request was not executed.
const DEFINITE_ERRORS: [&str; 2] = [
    "SERVER_ERROR no leader available, retry",
    "SERVER_ERROR leader not ready, retry",
];

/// What became of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Ret),
    /// Not executed; the line says why.
    Fail(String),
    /// Maybe executed; why we cannot tell.
    Unknown(String),
}

/// Counts of outcomes (one source for the round and run reports).
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub fail: AtomicU64,
    pub unknown: AtomicU64,
    /// Of the ok ones: writes that changed the key (STORED, DELETED, a
    /// number): the acknowledged writes the final reads must explain.
    pub acknowledged_writes: AtomicU64,
}

/// The history being recorded, on one clock for every client.
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    pub tally: Tally,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            ops: Mutex::new(Vec::new()),
            tally: Tally::default(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records one op as its outcome asks (a failed op is only counted).
    pub fn record(
        &self,
        client: ClientId,
        key: &str,
        call: Call,
        invoked_ns: u64,
        outcome: Outcome,
    ) {
        let completed_ns = self.now_ns();
        let op = match outcome {
            Outcome::Ok(ret) => {
                self.tally.ok.fetch_add(1, Relaxed);
                if is_acknowledged_write(&ret) {
                    self.tally.acknowledged_writes.fetch_add(1, Relaxed);
                }
                Op::completed(client, key, call, invoked_ns, completed_ns, ret)
            }
            Outcome::Fail(_) => {
                self.tally.fail.fetch_add(1, Relaxed);
                return;
            }
            Outcome::Unknown(_) => {
                self.tally.unknown.fetch_add(1, Relaxed);
                Op::pending(client, key, call, invoked_ns)
            }
        };
        self.lock().push(op);
    }

    /// Takes the ops recorded so far.
    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        // Nothing panics while holding it: push and take only.
        self.ops
            .lock()
            .expect("history lock is never held across a panic")
    }
}

fn is_acknowledged_write(ret: &Ret) -> bool {
    matches!(ret, Ret::Stored | Ret::Deleted | Ret::Number(_))
}

/// What the clients do.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub clients: u32,
    /// Keys are `{key_prefix}g{generation}k{0..keys}`.
    pub key_prefix: String,
    /// Keys in use at any one time.
    pub keys: usize,
    /// Every this long the clients move on to fresh keys, so that no key
    /// collects more ops than the checker takes (`check::OPS_PER_KEY_MAX`)
    /// while a few keys keep the clients contending. Keys of earlier
    /// generations are read again at the end of the round.
    pub key_generation: Duration,
    pub servers: Vec<SocketAddr>,
    /// How long a client waits for one reply before calling it unknown.
    pub reply_timeout: Duration,
    pub seed: u64,
    /// Numbers clients from this one up, so every round's clients (and
    /// values) are new.
    pub first_client: u32,
}

/// Running client threads; [`Workload::stop`] ends them after their
/// current op.
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Workload {
    pub fn start(config: &WorkloadConfig, recorder: Arc<Recorder>) -> anyhow::Result<Workload> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..config.clients {
            let client = Client {
                id: ClientId(config.first_client + i),
                config: config.clone(),
                recorder: recorder.clone(),
                stop: stop.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("client-{}", config.first_client + i))
                .spawn(move || client.run())?;
            threads.push(thread);
        }
        Ok(Workload { stop, threads })
    }

    /// Asks every client to stop and waits for them (at most one reply
    /// timeout each, all at once).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.halt();
    }
}

struct Client {
    id: ClientId,
    config: WorkloadConfig,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
}

impl Client {
    fn run(self) {
        let mut rng = StdRng::seed_from_u64(self.config.seed ^ (u64::from(self.id.0) << 32));
        let generation_ns = self.config.key_generation.as_nanos().max(1);
        let mut generation = None;
        let mut keys: Vec<String> = Vec::new();
        let mut stream: Option<TcpStream> = None;
        // The last unique each key's `gets` returned, for the next cas.
        let mut uniques = vec![1u64; self.config.keys];
        let mut writes = 0u64;
        while !self.stop.load(Relaxed) && writes < WRITES_PER_CLIENT_MAX {
            let now = u128::from(self.recorder.now_ns()) / generation_ns;
            if generation != Some(now) {
                generation = Some(now);
                let prefix = &self.config.key_prefix;
                keys = (0..self.config.keys)
                    .map(|k| format!("{prefix}g{now}k{k}"))
                    .collect();
                uniques.fill(1);
            }
            if stream.is_none() {
                let server = self.config.servers[rng.gen_range(0..self.config.servers.len())];
                stream = connect(server, self.config.reply_timeout);
                if stream.is_none() {
                    std::thread::sleep(ERROR_BACKOFF);
                    continue;
                }
            }
            let k = rng.gen_range(0..keys.len());
            writes += 1;
            let value = (u64::from(self.id.0 + 1) * WRITES_PER_CLIENT_MAX + writes) * VALUE_STRIDE;
            let value = value.to_string().into_bytes();
            let call = match rng.gen_range(0..20) {
                0..=4 => Call::Gets,
                5 | 6 => Call::Get,
                7..=9 => Call::Set(value),
                10 => Call::Add(value),
                11..=13 => Call::Cas {
                    value,
                    unique: uniques[k],
                },
                14 | 15 => Call::Incr(rng.gen_range(1..DELTA_MAX)),
                16 => Call::Decr(rng.gen_range(1..DELTA_MAX)),
                _ => Call::Delete,
            };
            let conn = stream.as_mut().expect("connected above");
            let invoked_ns = self.recorder.now_ns();
            let outcome = exchange(conn, &keys[k], &call);
            match &outcome {
                Outcome::Ok(Ret::HitCas { unique, .. }) => uniques[k] = *unique,
                Outcome::Ok(_) => {}
                Outcome::Fail(_) => std::thread::sleep(ERROR_BACKOFF),
                Outcome::Unknown(_) => {
                    // The connection may be out of step with its replies.
                    stream = None;
                    std::thread::sleep(ERROR_BACKOFF);
                }
            }
            self.recorder
                .record(self.id, &keys[k], call, invoked_ns, outcome);
        }
    }
}

pub fn connect(server: SocketAddr, reply_timeout: Duration) -> Option<TcpStream> {
    let stream = TcpStream::connect_timeout(&server, reply_timeout).ok()?;
    stream.set_read_timeout(Some(reply_timeout)).ok()?;
    stream.set_write_timeout(Some(reply_timeout)).ok()?;
    let _ = stream.set_nodelay(true);
    Some(stream)
}

/// Sends `call` on `key` and reads its reply.
pub fn exchange(stream: &mut TcpStream, key: &str, call: &Call) -> Outcome {
    if let Err(e) = stream.write_all(&encode(key, call)) {
        // Part of the request may have left: the server might execute it.
        return Outcome::Unknown(format!("send: {e}"));
    }
    read_reply(stream, call)
}

/// The request bytes for `call` on `key`.
pub fn encode(key: &str, call: &Call) -> Vec<u8> {
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

/// Reads one reply to `call` and sorts it (see the module doc).
fn read_reply(stream: &mut TcpStream, call: &Call) -> Outcome {
    let read = !matches!(
        call,
        Call::Set(_)
            | Call::Add(_)
            | Call::Cas { .. }
            | Call::Incr(_)
            | Call::Decr(_)
            | Call::Delete
    );
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let first_line_done = reply.ends_with(b"\r\n");
        let error = reply.starts_with(b"SERVER_ERROR")
            || reply.starts_with(b"CLIENT_ERROR")
            || reply.starts_with(b"ERROR");
        if first_line_done && (!read || error || reply.ends_with(b"END\r\n")) {
            break;
        }
        if reply.len() > REPLY_BYTES_MAX {
            return Outcome::Unknown("reply too long".into());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Outcome::Unknown("connection closed".into()),
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) => return Outcome::Unknown(format!("receive: {e}")),
        }
    }
    parse_reply(&reply, call)
}

/// Turns a complete reply into an outcome.
pub fn parse_reply(reply: &[u8], call: &Call) -> Outcome {
    let text = String::from_utf8_lossy(reply);
    let line = text.lines().next().unwrap_or_default();
    let is_read = matches!(call, Call::Get | Call::Gets);
    if line.starts_with("SERVER_ERROR") || line.starts_with("ERROR") {
        if is_read || DEFINITE_ERRORS.contains(&line) {
            return Outcome::Fail(line.to_string());
        }
        return Outcome::Unknown(line.to_string());
    }
    let ret = match line {
        "END" => Ret::Miss,
        "STORED" => Ret::Stored,
        "NOT_STORED" => Ret::NotStored,
        "EXISTS" => Ret::Exists,
        "NOT_FOUND" => Ret::NotFound,
        "DELETED" => Ret::Deleted,
        "CLIENT_ERROR cannot increment or decrement non-numeric value" => Ret::NonNumeric,
        l if l.starts_with("CLIENT_ERROR") => {
            // Our requests are well-formed; a client error is a finding, but
            // it certainly did nothing.
            return Outcome::Fail(l.to_string());
        }
        l if l.starts_with("VALUE ") => match parse_value(l, reply, call) {
            Some(ret) => ret,
            None => return Outcome::Unknown(format!("bad VALUE reply {l:?}")),
        },
        l => match l.parse() {
            Ok(n) => Ret::Number(n),
            Err(_) => return Outcome::Unknown(format!("unexpected reply {l:?}")),
        },
    };
    if !check::reply_fits(call, &ret) {
        return Outcome::Unknown(format!("reply {ret} does not fit {call}"));
    }
    Outcome::Ok(ret)
}

fn parse_value(line: &str, reply: &[u8], call: &Call) -> Option<Ret> {
    let fields: Vec<&str> = line.split(' ').collect();
    let len: usize = fields.get(3)?.parse().ok()?;
    let start = line.len() + 2;
    let value = reply.get(start..start + len)?.to_vec();
    Some(match call {
        Call::Gets => Ret::HitCas {
            value,
            unique: fields.get(4)?.parse().ok()?,
        },
        _ => Ret::Hit(value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_sort_into_ok_fail_unknown() {
        let set = Call::Set(b"1".to_vec());
        assert_eq!(parse_reply(b"STORED\r\n", &set), Outcome::Ok(Ret::Stored));
        assert!(matches!(
            parse_reply(b"SERVER_ERROR no leader available, retry\r\n", &set),
            Outcome::Fail(_)
        ));
        assert!(matches!(
            parse_reply(b"SERVER_ERROR leader changed, outcome unknown\r\n", &set),
            Outcome::Unknown(_)
        ));
        assert!(matches!(
            parse_reply(
                b"SERVER_ERROR leader changed, outcome unknown\r\n",
                &Call::Get
            ),
            Outcome::Fail(_)
        ));
        assert_eq!(
            parse_reply(b"VALUE k 0 2 7\r\nab\r\nEND\r\n", &Call::Gets),
            Outcome::Ok(Ret::HitCas {
                value: b"ab".to_vec(),
                unique: 7
            })
        );
        assert_eq!(
            parse_reply(b"12\r\n", &Call::Incr(1)),
            Outcome::Ok(Ret::Number(12))
        );
        assert!(matches!(parse_reply(b"12\r\n", &set), Outcome::Unknown(_)));
    }
}
