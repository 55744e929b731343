//! Many clients race for meta leases (`mg <key> N300 v`: a lease that
//! outlives the test, so no second one may be given) through every server
//! of a 3-server cluster while the leader is SIGKILLed: exactly one winner
//! (`W`) per lease, the others told it was won (`Z`).
//!
//! A request that failed is sent again until it gets `W` or `Z`. A request
//! whose outcome is unknown (the leader changed under it, or the connection
//! broke after it was sent) may have won without its client hearing so;
//! for those keys the test asks for at most one winner, for every other
//! key for exactly one.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster;
use common::poll_until;

const KEYS: usize = 150;
const CLIENTS_PER_SERVER: usize = 2;
/// The leader is killed once this share of all requests were answered.
const KILL_AFTER_PERCENT: usize = 30;
/// A client gives up on a key after this long without `W` or `Z`.
const KEY_DEADLINE: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(6);
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// What one request got.
enum Got {
    Won,
    Lost,
    /// An error line or a broken connection: `ambiguous` if the request may
    /// have been executed.
    Failed {
        ambiguous: bool,
    },
}

/// One `mg` exchange on `conn` (connected to `server` if `None`).
fn request(conn: &mut Option<BufReader<TcpStream>>, server: SocketAddr, key: &str) -> Got {
    if conn.is_none() {
        let Ok(stream) = TcpStream::connect_timeout(&server, IO_TIMEOUT) else {
            return Got::Failed { ambiguous: false };
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_nodelay(true);
        *conn = Some(BufReader::new(stream));
    }
    let reader = conn.as_mut().expect("connected above");
    let sent = reader
        .get_mut()
        .write_all(format!("mg {key} N300 v\r\n").as_bytes());
    if sent.is_err() {
        *conn = None;
        return Got::Failed { ambiguous: true };
    }
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(n) if n > 0 && line.ends_with("\r\n") => {}
        _ => {
            *conn = None;
            return Got::Failed { ambiguous: true };
        }
    }
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("VA ") {
        let len: usize = rest
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let mut block = vec![0u8; len + 2];
        if reader.read_exact(&mut block).is_err() {
            *conn = None;
            return Got::Failed { ambiguous: true };
        }
        return match (line.ends_with(" W"), line.contains(" Z")) {
            (true, false) => Got::Won,
            (false, true) => Got::Lost,
            _ => panic!("mg {key} N300 v answered {line:?}"),
        };
    }
    // The one error that may follow an execution; the others say that no
    // leader took the request.
    Got::Failed {
        ambiguous: line.contains("outcome unknown"),
    }
}

#[derive(Default)]
struct Tally {
    wins: usize,
    ambiguous: bool,
}

#[test]
fn one_winner_per_lease_across_a_leader_kill() {
    let mut cluster = cluster::start(3);
    let (leader, _) = cluster::leader_and_follower(&cluster);
    let servers = cluster.servers.clone();
    let tallies: Arc<Mutex<HashMap<usize, Tally>>> = Arc::default();
    let answered = Arc::new(AtomicUsize::new(0));
    let clients = servers.len() * CLIENTS_PER_SERVER;
    let mut threads = Vec::new();
    for client in 0..clients {
        let servers = servers.clone();
        let (tallies, answered) = (tallies.clone(), answered.clone());
        threads.push(std::thread::spawn(move || {
            let mut at = client % servers.len();
            let mut conn = None;
            let mut gave_up = Vec::new();
            for n in 0..KEYS {
                // Each client takes the keys in its own order.
                let key_number = (n * 7 + client * 31) % KEYS;
                let key = format!("lease-{key_number}");
                let started = Instant::now();
                loop {
                    let got = request(&mut conn, servers[at], &key);
                    let mut tallies = tallies.lock().expect("tallies");
                    let tally = tallies.entry(key_number).or_default();
                    match got {
                        Got::Won => tally.wins += 1,
                        Got::Lost => {}
                        Got::Failed { ambiguous } => {
                            tally.ambiguous |= ambiguous;
                            drop(tallies);
                            if conn.is_none() {
                                // That server may be the one killed.
                                at = (at + 1) % servers.len();
                            }
                            if started.elapsed() > KEY_DEADLINE {
                                gave_up.push(key_number);
                                break;
                            }
                            std::thread::sleep(RETRY_PAUSE);
                            continue;
                        }
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            gave_up
        }));
    }
    let kill_at = clients * KEYS * KILL_AFTER_PERCENT / 100;
    let reached = poll_until(Duration::from_secs(60), || {
        answered.load(Ordering::Relaxed) >= kill_at
    });
    assert!(reached, "the clients did not get {kill_at} answers");
    let name = cluster.name_of(leader).expect("the leader's name");
    cluster.kill(&name);
    let mut gave_up = Vec::new();
    for thread in threads {
        gave_up.extend(thread.join().expect("client thread"));
    }
    assert!(
        gave_up.is_empty(),
        "no W or Z within {KEY_DEADLINE:?} for {gave_up:?}"
    );
    let tallies = tallies.lock().expect("tallies");
    let mut ambiguous = 0;
    for key in 0..KEYS {
        let tally = &tallies[&key];
        assert!(tally.wins <= 1, "lease-{key} won {} times", tally.wins);
        if tally.ambiguous {
            ambiguous += 1;
        } else {
            assert_eq!(tally.wins, 1, "lease-{key} was never won");
        }
    }
    println!(
        "{KEYS} leases raced by {clients} clients over {} servers, leader killed after {kill_at} answers: \
         one winner each ({ambiguous} with a request of unknown outcome: at most one)",
        servers.len()
    );
}
