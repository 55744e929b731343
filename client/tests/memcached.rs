//! The client library against a real memcached 1.6 (`/usr/bin/memcached`),
//! one fresh server per test, plus fake servers on 127.0.0.1:0 for the
//! failure paths (silence, garbage, hang-up) memcached never produces.
//!
//! Every server process is owned by a [`Memcached`] guard that kills it when
//! the test ends, pass or fail. Nothing sleeps hoping for a state: startup
//! is polled against a deadline.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::bench::{self, BenchConfig, Protocol};
use client::{Client, Error, Options, Response, StoreMode, StoreResult, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MEMCACHED_BIN: &str = "/usr/bin/memcached";
/// How long memcached may take to accept its first connection.
const START_TIMEOUT_MS: u64 = 5_000;
/// Pause between connection attempts while memcached starts.
const START_POLL_MS: u64 = 5;
/// Another process may grab the free port between our probe and memcached's
/// bind; retry with a new port this many times.
const START_ATTEMPTS_MAX: usize = 5;
/// Where nothing listens. A port just released by a probe could be taken by
/// another test's memcached meanwhile; port 1 is privileged, so it is never
/// handed out as a free port.
const REFUSED_ADDR: &str = "127.0.0.1:1";
/// Per-request timeout in these tests: generous, as CI machines are slow.
const TEST_TIMEOUT_MS: u64 = 5_000;

/// A memcached process on a free loopback port, killed on drop.
struct Memcached {
    child: Child,
    addr: SocketAddr,
}

impl Memcached {
    fn start() -> Memcached {
        for _ in 0..START_ATTEMPTS_MAX {
            let addr = free_addr();
            let mut child = Command::new(MEMCACHED_BIN)
                // -u root: memcached refuses to run as root without it; it is
                // ignored when not root. -U 0: no UDP.
                .args(["-l", "127.0.0.1", "-U", "0", "-t", "1", "-u", "root", "-p"])
                .arg(addr.port().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {MEMCACHED_BIN}: {e}"));
            let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
            loop {
                if let Ok(stream) = TcpStream::connect(addr) {
                    // Two probes can be handed the same released port; make
                    // sure the server that answered is the one we started.
                    if serves_pid(stream, child.id()) {
                        return Memcached { child, addr };
                    }
                }
                if child.try_wait().expect("try_wait").is_some() {
                    break; // Port taken: try another.
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("memcached did not accept on {addr} within {START_TIMEOUT_MS} ms");
                }
                std::thread::sleep(Duration::from_millis(START_POLL_MS));
            }
        }
        panic!("memcached failed to start {START_ATTEMPTS_MAX} times");
    }

    async fn client(&self) -> Client {
        let options = Options {
            timeout: Some(Duration::from_millis(TEST_TIMEOUT_MS)),
        };
        Client::connect_with(self.addr, options)
            .await
            .expect("connect to memcached")
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True if the memcached behind `stream` reports process id `pid`.
fn serves_pid(mut stream: TcpStream, pid: u32) -> bool {
    use std::io::{Read, Write};
    let timeout = Some(Duration::from_millis(START_TIMEOUT_MS));
    if stream.set_read_timeout(timeout).is_err() || stream.write_all(b"stats\r\n").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while !reply.ends_with(b"END\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&reply).contains(&format!("STAT pid {pid}\r\n"))
}

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr")
}

fn data(values: &[Value]) -> Vec<&[u8]> {
    values.iter().map(|v| v.data.as_ref()).collect()
}

#[tokio::test]
async fn set_and_get_are_binary_safe() {
    let server = Memcached::start();
    let mut c = server.client().await;
    let binary: Vec<u8> = (0..=255u8).chain(*b"\r\nEND\r\n").collect();
    assert_eq!(
        c.set("bin", &binary, 0, 0).await.unwrap(),
        StoreResult::Stored
    );
    assert_eq!(
        c.set("crlf", "\r\n\r\n", u32::MAX, 0).await.unwrap(),
        StoreResult::Stored
    );
    assert_eq!(c.set("empty", "", 1, 0).await.unwrap(), StoreResult::Stored);
    let values = c
        .get(&["bin", "missing", "crlf", "empty", "bin"])
        .await
        .unwrap();
    assert_eq!(
        data(&values),
        vec![&binary[..], b"\r\n\r\n", b"", &binary[..]],
        "misses left out, repeated keys repeated"
    );
    assert_eq!(values[1].flags, u32::MAX);
    assert_eq!(values[1].key, Bytes::from_static(b"crlf"));
    assert!(values.iter().all(|v| v.cas.is_none()));
    assert_eq!(c.get_one("missing").await.unwrap(), None);
    // UTF-8 keys are raw bytes.
    c.set("clé", "v", 0, 0).await.unwrap();
    assert_eq!(c.get_one("clé").await.unwrap().unwrap().data, "v");
}

#[tokio::test]
async fn conditional_stores() {
    let server = Memcached::start();
    let mut c = server.client().await;
    assert_eq!(c.add("k", "a", 5, 0).await.unwrap(), StoreResult::Stored);
    assert_eq!(c.add("k", "b", 0, 0).await.unwrap(), StoreResult::NotStored);
    assert_eq!(
        c.replace("nope", "b", 0, 0).await.unwrap(),
        StoreResult::NotStored
    );
    assert_eq!(
        c.replace("k", "B", 7, 0).await.unwrap(),
        StoreResult::Stored
    );
    assert_eq!(c.append("k", "C").await.unwrap(), StoreResult::Stored);
    assert_eq!(c.prepend("k", "A").await.unwrap(), StoreResult::Stored);
    assert_eq!(c.append("nope", "x").await.unwrap(), StoreResult::NotStored);
    assert_eq!(
        c.prepend("nope", "x").await.unwrap(),
        StoreResult::NotStored
    );
    let v = c.get_one("k").await.unwrap().unwrap();
    assert_eq!((v.data.as_ref(), v.flags), (&b"ABC"[..], 7));
}

#[tokio::test]
async fn cas_flow() {
    let server = Memcached::start();
    let mut c = server.client().await;
    assert_eq!(
        c.cas("c", "x", 0, 0, 1).await.unwrap(),
        StoreResult::NotFound
    );
    c.set("c", "v1", 3, 0).await.unwrap();
    let v = c.gets(&["c"]).await.unwrap().pop().unwrap();
    let cas = v.cas.expect("gets returns a cas unique");
    assert_eq!(v.flags, 3);
    assert_eq!(
        c.cas("c", "v2", 4, 0, cas).await.unwrap(),
        StoreResult::Stored
    );
    // The old unique is stale now.
    assert_eq!(
        c.cas("c", "v3", 0, 0, cas).await.unwrap(),
        StoreResult::Exists
    );
    let v = c.gets(&["c"]).await.unwrap().pop().unwrap();
    assert_eq!(v.data, "v2");
    assert_ne!(v.cas, Some(cas));
    // gats returns the same unique: touching does not change it.
    let touched = c.gats(0, &["c"]).await.unwrap().pop().unwrap();
    assert_eq!(touched.cas, v.cas);
}

#[tokio::test]
async fn incr_decr_wrap_floor_and_errors() {
    let server = Memcached::start();
    let mut c = server.client().await;
    assert_eq!(c.incr("n", 1).await.unwrap(), None);
    assert_eq!(c.decr("n", 1).await.unwrap(), None);
    c.set("n", "18446744073709551615", 0, 0).await.unwrap();
    assert_eq!(c.incr("n", 1).await.unwrap(), Some(0), "incr wraps at 2^64");
    assert_eq!(c.incr("n", 10).await.unwrap(), Some(10));
    assert_eq!(c.decr("n", 100).await.unwrap(), Some(0), "decr floors at 0");
    c.set("text", "hi", 0, 0).await.unwrap();
    match c.incr("text", 1).await {
        Err(Error::Server(line)) => assert_eq!(
            line,
            "CLIENT_ERROR cannot increment or decrement non-numeric value"
        ),
        other => panic!("expected a CLIENT_ERROR, got {other:?}"),
    }
    // The connection survives a server error line.
    assert_eq!(c.incr("n", u64::MAX).await.unwrap(), Some(u64::MAX));
}

#[tokio::test]
async fn delete_touch_gat() {
    let server = Memcached::start();
    let mut c = server.client().await;
    c.set("d", "v", 0, 0).await.unwrap();
    assert!(c.delete("d").await.unwrap());
    assert!(!c.delete("d").await.unwrap());
    assert!(!c.touch("d", 10).await.unwrap());
    c.set("t", "v", 9, 0).await.unwrap();
    assert!(c.touch("t", 100).await.unwrap());
    let got = c.gat(100, &["t", "d"]).await.unwrap();
    assert_eq!(data(&got), vec![b"v"]);
    assert_eq!(got[0].flags, 9);
    // A negative expiry expires at once.
    assert!(c.touch("t", -1).await.unwrap());
    assert!(c.get(&["t"]).await.unwrap().is_empty());
    c.set("g", "v", 0, 0).await.unwrap();
    assert_eq!(c.gat(-1, &["g"]).await.unwrap().len(), 1);
    assert!(c.get(&["g"]).await.unwrap().is_empty());
}

#[tokio::test]
async fn admin_commands() {
    let server = Memcached::start();
    let mut c = server.client().await;
    let version = c.version().await.unwrap();
    assert!(version.starts_with("1.6"), "{version}");
    c.verbosity(0).await.unwrap();
    c.set("f", "v", 0, 0).await.unwrap();
    c.flush_all(None).await.unwrap();
    assert!(c.get(&["f"]).await.unwrap().is_empty());
    c.flush_all(Some(1000)).await.unwrap();
    c.flush_all(Some(0)).await.unwrap();

    let stats = c.stats(None).await.unwrap();
    let get = |name: &str| {
        stats
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("version"), Some(version));
    assert!(get("pid").is_some());
    let settings = c.stats(Some("settings")).await.unwrap();
    assert!(settings
        .iter()
        .any(|(n, v)| n == "item_size_max" && v == "1048576"));
    assert!(c.stats(Some("reset")).await.unwrap().is_empty());
    match c.stats(Some("bogus")).await {
        Err(Error::Server(line)) => assert_eq!(line, "ERROR"),
        other => panic!("expected ERROR, got {other:?}"),
    }
    // A stats group answered with non-STAT lines (or none) still parses.
    let cached = c.stats(Some("cachedump 1 1")).await.unwrap();
    assert!(cached.iter().all(|(name, _)| name == "ITEM"), "{cached:?}");
    c.quit().await.unwrap();
}

#[tokio::test]
async fn too_large_and_invalid_requests_keep_the_connection() {
    let server = Memcached::start();
    let mut c = server.client().await;
    let big = vec![b'x'; 2 * 1024 * 1024];
    match c.set("big", &big, 0, 0).await {
        Err(Error::Server(line)) => assert_eq!(line, "SERVER_ERROR object too large for cache"),
        other => panic!("expected SERVER_ERROR, got {other:?}"),
    }
    // Refused before sending: nothing reaches the server.
    assert!(matches!(
        c.set("bad key", "v", 0, 0).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        c.get(&["a\r\nflush_all"]).await,
        Err(Error::Invalid(_))
    ));
    let long = "k".repeat(251);
    assert!(matches!(c.delete(&long).await, Err(Error::Invalid(_))));
    assert!(matches!(c.get::<&str>(&[]).await, Err(Error::Invalid(_))));
    assert_eq!(c.set("ok", "v", 0, 0).await.unwrap(), StoreResult::Stored);
    let key250 = "k".repeat(250);
    assert_eq!(
        c.set(&key250, "v", 0, 0).await.unwrap(),
        StoreResult::Stored
    );
    assert_eq!(c.get_one(&key250).await.unwrap().unwrap().data, "v");
}

#[tokio::test]
async fn noreply_is_seen_by_the_next_request() {
    let server = Memcached::start();
    let mut c = server.client().await;
    c.store_noreply(StoreMode::Set, "nr", "1", 2, 0, 0)
        .await
        .unwrap();
    c.store_noreply(StoreMode::Append, "nr", "2", 0, 0, 0)
        .await
        .unwrap();
    let v = c.get_one("nr").await.unwrap().unwrap();
    assert_eq!((v.data.as_ref(), v.flags), (&b"12"[..], 2));
}

#[tokio::test]
async fn pipeline_replies_in_order() {
    let server = Memcached::start();
    let mut c = server.client().await;
    let keys: Vec<String> = (0..200).map(|i| format!("p{i}")).collect();
    let mut p = c.pipeline();
    for (i, key) in keys.iter().enumerate() {
        p.set(key.as_bytes(), i.to_string().as_bytes(), 0, 0);
    }
    p.store(StoreMode::Set, b"quiet", b"q", 0, 0, 0, true);
    for key in &keys {
        p.get(&[key.as_bytes()], false);
    }
    p.arith(b"p7", 3, true)
        .delete(b"p0")
        .touch(b"none", 1)
        .version();
    assert_eq!(p.len(), 404);
    let replies = p.execute().await.unwrap();
    assert_eq!(replies.len(), 404);
    assert!(replies[..200].iter().all(|r| *r == Response::Stored));
    for (i, reply) in replies[200..400].iter().enumerate() {
        match reply {
            Response::Values(v) => assert_eq!(v[0].data, i.to_string()),
            other => panic!("reply {i}: {other:?}"),
        }
    }
    assert_eq!(replies[400], Response::Number(10));
    assert_eq!(replies[401], Response::Deleted);
    assert_eq!(replies[402], Response::NotFound);
    assert!(matches!(replies[403], Response::Version(_)));
    assert_eq!(c.get_one("quiet").await.unwrap().unwrap().data, "q");
    // A refused request fails the whole batch before anything is sent.
    let mut p = c.pipeline();
    p.set(b"fine", b"v", 0, 0).set(b"not fine", b"v", 0, 0);
    assert!(matches!(p.execute().await, Err(Error::Invalid(_))));
    assert!(c.get(&["fine"]).await.unwrap().is_empty());
}

/// Large writes and large replies at once: without reading while flushing,
/// both sides block on full socket buffers.
#[tokio::test]
async fn deep_pipeline_of_large_values_does_not_deadlock() {
    let server = Memcached::start();
    let mut c = server.client().await;
    let value = vec![b'z'; 256 * 1024];
    let pairs = 64;
    let mut p = c.pipeline();
    for _ in 0..pairs {
        p.set(b"big", &value, 0, 0).get(&[b"big".as_slice()], false);
    }
    let replies = p.execute().await.unwrap();
    assert_eq!(replies.len(), 2 * pairs);
    for pair in replies.chunks(2) {
        assert_eq!(pair[0], Response::Stored);
        match &pair[1] {
            Response::Values(v) => assert_eq!(v[0].data.len(), value.len()),
            other => panic!("{other:?}"),
        }
    }
}

/// A fake server on 127.0.0.1:0 that runs `behave` on its first connection.
async fn fake_server<F, Fut>(behave: F) -> SocketAddr
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((stream, _)) = listener.accept().await {
            behave(stream).await;
        }
    });
    addr
}

#[tokio::test]
async fn silent_server_times_out_and_poisons_the_connection() {
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
    let addr = fake_server(|stream| async move {
        // Keep the socket open, never answer, until the test ends.
        let _stream = stream;
        let _ = hold_rx.await;
    })
    .await;
    let options = Options {
        timeout: Some(Duration::from_millis(100)),
    };
    let mut c = Client::connect_with(addr, options).await.unwrap();
    let started = Instant::now();
    assert!(matches!(c.version().await, Err(Error::Timeout(_))));
    assert!(started.elapsed() < Duration::from_millis(TEST_TIMEOUT_MS));
    assert!(matches!(c.version().await, Err(Error::Broken)));
    drop(hold_tx);
}

#[tokio::test]
async fn garbage_reply_is_a_protocol_error() {
    let addr = fake_server(|mut stream| async move {
        let mut buf = [0u8; 64];
        let _ = stream.read(&mut buf).await;
        let _ = stream.write_all(b"HELLO\r\n").await;
        let _ = stream.read(&mut buf).await;
    })
    .await;
    let mut c = Client::connect(addr).await.unwrap();
    assert!(matches!(
        c.set("k", "v", 0, 0).await,
        Err(Error::Protocol(_))
    ));
    assert!(matches!(c.version().await, Err(Error::Broken)));
}

#[tokio::test]
async fn hang_up_is_closed_and_refused_is_io() {
    let addr = fake_server(|mut stream| async move {
        let mut buf = [0u8; 64];
        let _ = stream.read(&mut buf).await;
        // Dropping the stream closes it without a reply.
    })
    .await;
    let mut c = Client::connect(addr).await.unwrap();
    let result = c.version().await;
    assert!(
        matches!(result, Err(Error::Closed) | Err(Error::Io(_))),
        "{result:?}"
    );
    assert!(matches!(
        Client::connect(REFUSED_ADDR).await,
        Err(Error::Io(_))
    ));
}

fn bench_config(addr: SocketAddr) -> BenchConfig {
    BenchConfig {
        server: addr,
        protocol: Protocol::Memcache,
        connections: 4,
        pipeline: 8,
        keys: 1_000,
        key_size: 16,
        value_size: 50,
        get_ratio: 0.5,
        duration: None,
        ops: Some(10_000),
        warmup: Duration::ZERO,
        preload: true,
        preload_depth: bench::PRELOAD_DEPTH_DEFAULT,
        progress: false,
        seed: 7,
    }
}

#[tokio::test]
async fn bench_runs_an_exact_op_count() {
    let server = Memcached::start();
    let report = bench::run(bench_config(server.addr)).await.unwrap();
    assert_eq!(report.ops, 10_000);
    assert_eq!(report.gets + report.sets, 10_000);
    assert_eq!(report.hits, report.gets, "every key was preloaded");
    assert_eq!((report.errors, report.connection_errors), (0, 0));
    assert_eq!(report.latency_ns.len(), 10_000);
    assert!(report.ops_per_s() > 0.0);
    assert!(report.to_json().contains("\"ops\":10000"));
    // Every key exists with the preloaded or benchmark value size.
    let mut c = server.client().await;
    let v = c.get_one(format!("k{:015}", 999)).await.unwrap().unwrap();
    assert_eq!(v.data.len(), 50);
}

#[tokio::test]
async fn bench_stops_by_duration() {
    let server = Memcached::start();
    let config = BenchConfig {
        duration: Some(Duration::from_millis(300)),
        warmup: Duration::from_millis(100),
        ops: None,
        preload: false,
        get_ratio: 1.0,
        ..bench_config(server.addr)
    };
    let started = Instant::now();
    let report = bench::run(config).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(report.ops > 0);
    assert_eq!(report.sets, 0);
    assert_eq!(report.hits, 0, "nothing was stored");
    assert!(
        report.elapsed >= Duration::from_millis(300),
        "{:?}",
        report.elapsed
    );
}

#[tokio::test]
async fn bench_reports_a_refused_connection() {
    let result = bench::run(bench_config(REFUSED_ADDR.parse().unwrap())).await;
    assert!(
        matches!(result, Err(bench::BenchError::Connect { .. })),
        "{result:?}"
    );
}
