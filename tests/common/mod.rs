//! Harness shared by the end-to-end tests in `tests/`: real processes on
//! 127.0.0.1, raw protocol bytes in, exact bytes out.
//!
//! It owns every process a test starts (`ServerProc` kills and reaps its child
//! on drop, so a failing assertion never leaks a server), the temporary data
//! directories, free-port selection and readiness polling. It must not sleep
//! to hope that something happened: every wait polls a condition with a
//! deadline. Each test file includes it with `mod common;`.
//!
//! Switches (environment variables):
//! - `STORE_E2E_TARGET=memcached`: every `StoreServer::start` starts the
//!   system memcached instead of our server, so the tests themselves can be
//!   checked against the reference implementation. Tests that need our data
//!   directory (crash, corruption, durability) skip in that mode.
//! - `CI`: a missing external tool (memcached, memccapable, python3 with
//!   pymemcache and pytest) fails the test instead of skipping it.
//! - `MEMCACHED_BIN`, `MEMCCAPABLE_BIN`, `PYTHON_BIN`: override tool paths.

#![allow(dead_code)]

pub mod cluster;
pub mod memcapable;
pub mod pymemcache;

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take from spawn to answering `version`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Default deadline for one expected reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often readiness and exit are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Start attempts when a just-freed port was taken by someone else meanwhile.
const START_ATTEMPTS_MAX: usize = 5;

/// Which implementation `StoreServer::start` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Store,
    Memcached,
}

pub fn target() -> Target {
    match std::env::var("STORE_E2E_TARGET").as_deref() {
        Ok("memcached") => Target::Memcached,
        Ok("store") | Ok("") | Err(_) => Target::Store,
        Ok(other) => panic!("STORE_E2E_TARGET must be `store` or `memcached`, not {other:?}"),
    }
}

pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Reports a missing prerequisite: fails under CI, prints a SKIP line locally.
/// Returns normally only when the caller should skip (return from the test).
pub fn skip(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: required tool missing under CI: {why}");
    }
    eprintln!("SKIP {test}: {why}");
    println!("SKIP {test}: {why}");
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn tool(env_var: &str, default: &str) -> Option<PathBuf> {
    let name = std::env::var(env_var).unwrap_or_else(|_| default.to_string());
    find_in_path(&name)
}

pub fn memcached_bin() -> Option<PathBuf> {
    tool("MEMCACHED_BIN", "memcached")
}

pub fn memccapable_bin() -> Option<PathBuf> {
    tool("MEMCCAPABLE_BIN", "memccapable")
}

/// A tool of Debian's libmemcached-tools (memcstat, memcdump, memcflush).
pub fn libmemcached_tool(name: &str) -> Option<PathBuf> {
    find_in_path(name)
}

/// memcached's own `memcached-tool` script (Debian ships it in the memcached
/// package) and the perl that runs it.
pub fn memcached_tool() -> Option<(PathBuf, PathBuf)> {
    let script = find_in_path(
        &std::env::var("MEMCACHED_TOOL")
            .unwrap_or_else(|_| "/usr/share/memcached/scripts/memcached-tool".into()),
    )?;
    Some((find_in_path("perl")?, script))
}

/// Sends `request` followed by `version` and returns exactly what the server
/// answered to `request` (everything before the `VERSION` line).
pub fn reply_to(conn: &mut Conn, request: &[u8]) -> Vec<u8> {
    conn.send(request);
    conn.send(b"version\r\n");
    let mut head = conn
        .read_until(b"VERSION ", REPLY_TIMEOUT)
        .unwrap_or_else(|p| panic!("no reply to {}: {}", esc(request), esc(&p)));
    conn.read_until(b"\r\n", REPLY_TIMEOUT)
        .unwrap_or_else(|p| panic!("VERSION line cut: {}", esc(&p)));
    head.truncate(head.len() - b"VERSION ".len());
    head
}

/// python3 with pymemcache and pytest importable.
pub fn python_with_pymemcache() -> Option<PathBuf> {
    let py = tool("PYTHON_BIN", "python3")?;
    let ok = Command::new(&py)
        .args(["-c", "import pymemcache, pytest"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(py)
}

/// The seed of a differential run (`what` names it): `STORE_DIFF_SEED`
/// replays one, else a random one; printed either way.
pub fn diff_seed(what: &str) -> u64 {
    let seed = match std::env::var("STORE_DIFF_SEED") {
        Ok(s) => s.trim().parse().expect("STORE_DIFF_SEED must be a u64"),
        Err(_) => rand::random(),
    };
    println!("{what} seed: {seed} (replay with STORE_DIFF_SEED={seed})");
    eprintln!("{what} seed: {seed} (replay with STORE_DIFF_SEED={seed})");
    seed
}

/// Steps of a differential run, at most, and its time budget.
pub const DIFF_STEPS_MAX: usize = 20_000;
pub const DIFF_RUN_TIME_MAX: Duration = Duration::from_secs(60);

/// The same steps, each a few requests from `next_step`, given to
/// memcached (`reference`) and to our server (`ours`), whose answers (as
/// each side renders them comparable) must be equal; `what` names the run
/// in its messages. Stops after [`DIFF_STEPS_MAX`] steps or
/// [`DIFF_RUN_TIME_MAX`], and fails if fewer than 200 ran.
pub fn run_differential<R: std::fmt::Debug>(
    what: &str,
    seed: u64,
    mut next_step: impl FnMut() -> Vec<R>,
    mut reference: impl FnMut(&[R]) -> Result<Vec<String>, String>,
    mut ours: impl FnMut(&[R]) -> Result<Vec<String>, String>,
) {
    let started = Instant::now();
    let mut history: Vec<String> = Vec::new();
    let mut steps = 0;
    while steps < DIFF_STEPS_MAX && started.elapsed() < DIFF_RUN_TIME_MAX {
        let requests = next_step();
        let sent = format!("{requests:?}");
        let want = reference(&requests)
            .unwrap_or_else(|e| panic!("seed {seed} step {steps}: memcached: {e}\nsent {sent}"));
        let got = ours(&requests)
            .unwrap_or_else(|e| panic!("seed {seed} step {steps}: store: {e}\nsent {sent}"));
        assert_eq!(
            got,
            want,
            "seed {seed} step {steps}: responses differ (left: store, right: memcached)\nsent {sent}\nprevious steps:\n{}",
            history.join("\n")
        );
        history.push(format!("[{steps}] {sent} -> {want:?}"));
        if history.len() > 6 {
            history.remove(0);
        }
        steps += 1;
    }
    println!("{what}: {steps} steps in {:?}", started.elapsed());
    assert!(
        steps >= 200,
        "only {steps} steps ran within {DIFF_RUN_TIME_MAX:?}"
    );
}

/// A port that was free a moment ago; see [`free_ports`].
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of the ports tests hand out.
const TEST_PORTS_FIRST: u16 = 20_000;
/// Ports are handed out from bands of this many, every other band.
const TEST_PORT_BAND: u16 = 1_000;
/// Bands handed out: 20000-20999, 22000-22999, ..., 30000-30999.
const TEST_PORT_BANDS: u16 = 6;

/// The first of `count` consecutive ports that were free a moment ago for
/// TCP and UDP, as were the UDP ports 1000 above them (an LB's group port,
/// lb's PEER_PORT_OFFSET), and that this test process never handed out
/// before.
///
/// They lie below the kernel's ephemeral range (Linux's default starts at
/// 32768), which the OS takes bind(0) ports and outgoing connections'
/// source ports from: a test that kills a server and starts it again on
/// its port found that port taken meanwhile, by another test's server or
/// a connection's source port. Only every other thousand is handed out, so
/// that the thousand above a port, where its LB group port lies, is
/// nobody's. What another process holds is still possible; starts retry
/// on a port in use.
pub fn free_ports(count: u16) -> u16 {
    use std::sync::Mutex;
    // The next port's index among those handed out, from a random place
    // so that test processes run one after another start elsewhere.
    static NEXT: Mutex<Option<u32>> = Mutex::new(None);
    let total = u32::from(TEST_PORT_BANDS) * u32::from(TEST_PORT_BAND);
    assert!(
        (1..=TEST_PORT_BAND).contains(&count),
        "{count} ports at once"
    );
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let mut index = next.unwrap_or_else(|| rand::random::<u32>() % total);
    for _ in 0..total {
        let band_offset = (index % u32::from(TEST_PORT_BAND)) as u16;
        if band_offset + count > TEST_PORT_BAND {
            // Not enough left in this band: the next one.
            index = (index + u32::from(TEST_PORT_BAND - band_offset)) % total;
            continue;
        }
        let band = (index / u32::from(TEST_PORT_BAND)) as u16;
        let first = TEST_PORTS_FIRST + 2 * band * TEST_PORT_BAND + band_offset;
        index = (index + u32::from(count)) % total;
        let free = (first..first + count).all(|port| {
            TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port + TEST_PORT_BAND)).is_ok()
        });
        if free {
            *next = Some(index);
            return first;
        }
    }
    panic!("no {count} free ports left among the tests' {total}");
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Printable form of protocol bytes for assertion messages.
pub fn esc(bytes: &[u8]) -> String {
    const SHOWN_MAX: usize = 600;
    let mut s = String::new();
    for &b in bytes.iter().take(SHOWN_MAX) {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > SHOWN_MAX {
        s.push_str(&format!("... ({} bytes in all)", bytes.len()));
    }
    s
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct ServerProc {
    child: Option<Child>,
    pub stderr_path: PathBuf,
    pub stdout_path: PathBuf,
    pub exit_status: Option<ExitStatus>,
}

impl ServerProc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        self.try_reap();
        self.child.is_some()
    }

    fn try_reap(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                self.exit_status = Some(status);
                self.child = None;
            }
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.exit_status = child.wait().ok();
        }
    }

    pub fn signal(&mut self, sig: libc::c_int) {
        if let Some(child) = self.child.as_ref() {
            // SAFETY: kill(2) on the pid of a child we have not reaped yet, so
            // the pid cannot have been reused.
            let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
            assert_eq!(rc, 0, "kill({}, {sig}) failed", child.id());
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if poll_until(timeout, || !self.is_running()) {
            self.exit_status
        } else {
            None
        }
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn spawn_logged(mut cmd: Command, log_dir: &Path, tag: &str) -> ServerProc {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stderr_path = log_dir.join(format!("{tag}-{n}.stderr"));
    let stdout_path = log_dir.join(format!("{tag}-{n}.stdout"));
    let err = File::create(&stderr_path).expect("create stderr log");
    let out = File::create(&stdout_path).expect("create stdout log");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    ServerProc {
        child: Some(child),
        stderr_path,
        stdout_path,
        exit_status: None,
    }
}

/// Polls connect + `version\r\n` until a `VERSION ` line comes back, the
/// process exits, or the deadline passes.
/// [`wait_ready`] with a binary Version request, which a server under
/// SASL answers before authentication.
fn wait_ready_binary(proc: &mut ServerProc, port: u16, timeout: Duration) -> Result<(), String> {
    let mut version = [0u8; 24];
    version[0] = 0x80;
    version[1] = 0x0b;
    wait_answering(proc, port, timeout, |s| {
        let mut head = [0u8; 24];
        s.write_all(&version).is_ok() && s.read_exact(&mut head).is_ok() && head[0] == 0x81
    })
}

fn wait_ready(proc: &mut ServerProc, port: u16, timeout: Duration) -> Result<(), String> {
    wait_answering(proc, port, timeout, |s| {
        if s.write_all(b"version\r\n").is_err() {
            return false;
        }
        let mut got = Vec::new();
        let mut b = [0u8; 256];
        while !got.ends_with(b"\n") {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
        // A server under -Y answers before its client logged in.
        (got.starts_with(b"VERSION ") || got == b"CLIENT_ERROR unauthenticated\r\n")
            && got.ends_with(b"\r\n")
    })
}

/// Polls until `answers` holds on a new connection to `port`, failing at
/// once if the process exits, or at the deadline.
fn wait_answering(
    proc: &mut ServerProc,
    port: u16,
    timeout: Duration,
    answers: impl Fn(&mut TcpStream) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if !proc.is_running() {
            return Err(format!(
                "server exited before it was ready ({:?}); stderr:\n{}",
                proc.exit_status,
                proc.stderr_text()
            ));
        }
        if let Ok(mut s) =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            if answers(&mut s) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "server on port {port} not ready after {timeout:?}; stderr:\n{}",
                proc.stderr_text()
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn looks_like_port_clash(err: &str) -> bool {
    let e = err.to_ascii_lowercase();
    e.contains("address already in use")
        || e.contains("addrinuse")
        || e.contains("failed to listen")
}

/// The system memcached (reference implementation), on a free port.
pub struct Memcached {
    pub proc: ServerProc,
    pub port: u16,
    _logs: tempfile::TempDir,
}

impl Memcached {
    /// Starts memcached, or returns None (after `skip`) when it is not installed.
    pub fn start_or_skip(test: &str) -> Option<Memcached> {
        if memcached_bin().is_none() {
            skip(
                test,
                "memcached not found in PATH (apt-get install memcached)",
            );
            return None;
        }
        Some(Memcached::start(&[]))
    }

    pub fn start(extra: &[&str]) -> Memcached {
        Self::start_with_env(extra, &[])
    }

    /// [`Memcached::start`] with environment variables set for it (Cyrus
    /// SASL's `SASL_CONF_PATH`, say).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &Path)]) -> Memcached {
        let bin = memcached_bin().expect("memcached not found in PATH");
        let logs = tempfile::Builder::new()
            .prefix("memcached-logs")
            .tempdir()
            .expect("tempdir");
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS_MAX {
            let port = free_port();
            let mut cmd = Command::new(&bin);
            cmd.args(["-p", &port.to_string(), "-l", "127.0.0.1", "-U", "0"]);
            // memcached refuses to run as root without -u.
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                cmd.args(["-u", "root"]);
            }
            cmd.args(extra);
            for (name, value) in env {
                cmd.env(name, value);
            }
            let mut proc = spawn_logged(cmd, logs.path(), "memcached");
            // memcached 1.6.18 under -S dies of a text request; under -Z
            // a connection is all a test without its certificates sees.
            let ready = if extra.contains(&"-Z") {
                wait_answering(&mut proc, port, READY_TIMEOUT, |_| true)
            } else if extra.contains(&"-S") {
                wait_ready_binary(&mut proc, port, READY_TIMEOUT)
            } else {
                wait_ready(&mut proc, port, READY_TIMEOUT)
            };
            match ready {
                Ok(()) => {
                    return Memcached {
                        proc,
                        port,
                        _logs: logs,
                    }
                }
                Err(e) if looks_like_port_clash(&e) => last_err = e,
                Err(e) => panic!("memcached failed to start: {e}"),
            }
        }
        panic!("memcached failed to start after {START_ATTEMPTS_MAX} attempts: {last_err}");
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(self.port)
    }
}

/// Our server (`store addsrv`), or memcached when `STORE_E2E_TARGET=memcached`.
pub struct StoreServer {
    pub target: Target,
    pub proc: Option<ServerProc>,
    pub port: u16,
    /// Extra arguments, kept for restarts.
    pub args: Vec<String>,
    data_dir: PathBuf,
    _owned_dir: Option<tempfile::TempDir>,
    logs: tempfile::TempDir,
}

impl StoreServer {
    pub fn store_bin() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_store"))
    }

    /// Starts a server with a fresh temporary data directory.
    pub fn start(extra: &[&str]) -> StoreServer {
        Self::try_start(extra).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(extra: &[&str]) -> Result<StoreServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("store-e2e-data")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().to_path_buf();
        let mut s = Self::new_stopped(&path, extra);
        s._owned_dir = Some(dir);
        s.try_restart()?;
        Ok(s)
    }

    /// Starts a server on an existing data directory (the caller keeps it).
    pub fn start_in(dir: &Path, extra: &[&str]) -> Result<StoreServer, String> {
        let mut s = Self::new_stopped(dir, extra);
        s.try_restart()?;
        Ok(s)
    }

    /// A handle that is not running yet; `try_restart` starts it.
    pub fn new_stopped(dir: &Path, extra: &[&str]) -> StoreServer {
        StoreServer {
            target: target(),
            proc: None,
            port: 0,
            args: extra.iter().map(|s| s.to_string()).collect(),
            data_dir: dir.to_path_buf(),
            _owned_dir: None,
            logs: tempfile::Builder::new()
                .prefix("store-e2e-logs")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory of the server's (first) replica group's files.
    pub fn group_dir(&self) -> PathBuf {
        self.data_dir.join("groups").join("0")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.group_dir().join("log")
    }

    fn command(&self, port: u16) -> Command {
        match self.target {
            Target::Store => {
                let mut cmd = Command::new(Self::store_bin());
                cmd.args([
                    "addsrv",
                    "-p",
                    &port.to_string(),
                    "-l",
                    "127.0.0.1",
                    "--data-dir",
                ]);
                cmd.arg(&self.data_dir);
                cmd.args(&self.args);
                cmd
            }
            Target::Memcached => {
                let bin =
                    memcached_bin().expect("STORE_E2E_TARGET=memcached needs memcached in PATH");
                let mut cmd = Command::new(bin);
                cmd.args(["-p", &port.to_string(), "-l", "127.0.0.1", "-U", "0"]);
                // SAFETY: geteuid has no preconditions.
                if unsafe { libc::geteuid() } == 0 {
                    cmd.args(["-u", "root"]);
                }
                // Map the options both servers share; drop store-only ones.
                let mut it = self.args.iter();
                while let Some(a) = it.next() {
                    match a.as_str() {
                        "-c" | "-I" | "-t" => {
                            cmd.arg(a);
                            cmd.arg(it.next().expect("option value"));
                        }
                        "-v" => {}
                        "--snapshot-log-bytes" => {
                            it.next();
                        }
                        other => panic!("no memcached equivalent for store option {other}"),
                    }
                }
                cmd
            }
        }
    }

    /// (Re)starts the process on the same data directory and a new free port.
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_restart(&mut self) -> Result<(), String> {
        assert!(
            self.proc.as_mut().is_none_or(|p| !p.is_running()),
            "restart while the server is still running"
        );
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS_MAX {
            let port = free_port();
            let mut proc = spawn_logged(self.command(port), self.logs.path(), "store");
            // Under -Z the port speaks TLS only, whose handshake needs the
            // test's certificates: a connection is enough. Under -S a text
            // request is refused: ask in binary.
            let res = if self.args.iter().any(|a| a == "-Z") {
                wait_answering(&mut proc, port, READY_TIMEOUT, |_| true)
            } else if self.args.iter().any(|a| a == "-S") {
                wait_ready_binary(&mut proc, port, READY_TIMEOUT)
            } else {
                wait_ready(&mut proc, port, READY_TIMEOUT)
            };
            self.proc = Some(proc);
            match res {
                Ok(()) => {
                    self.port = port;
                    return Ok(());
                }
                Err(e) if looks_like_port_clash(&e) => last_err = e,
                Err(e) => return Err(e),
            }
        }
        Err(format!(
            "server failed to start after {START_ATTEMPTS_MAX} attempts: {last_err}"
        ))
    }

    /// Starts the process and waits for it to exit by itself (for a server
    /// that must refuse to start). Returns its status and stderr.
    pub fn run_expecting_exit(&mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        let port = free_port();
        let mut proc = spawn_logged(self.command(port), self.logs.path(), "store");
        let status = proc.wait_exit(timeout);
        let stderr = proc.stderr_text();
        self.proc = Some(proc);
        (status, stderr)
    }

    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill9();
        }
    }

    /// Sends SIGTERM and waits for the exit; panics if it takes longer than `timeout`.
    pub fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        let p = self.proc.as_mut().expect("server not started");
        p.signal(libc::SIGTERM);
        match p.wait_exit(timeout) {
            Some(status) => status,
            None => panic!("server did not exit within {timeout:?} of SIGTERM"),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    pub fn stderr_text(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| p.stderr_text())
            .unwrap_or_default()
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(self.port)
    }
}

/// A raw-bytes client connection with an input buffer.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Conn {
    pub fn connect(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).expect("set_nodelay");
        Conn {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write {}: {e}", esc(bytes)));
    }

    /// Writes `bytes` in pieces of the given sizes (the rest in one piece).
    pub fn send_split(&mut self, bytes: &[u8], sizes: &[usize]) {
        let mut at = 0;
        for &n in sizes {
            let end = (at + n).min(bytes.len());
            if at < end {
                self.send(&bytes[at..end]);
                self.stream.flush().expect("flush");
            }
            at = end;
        }
        if at < bytes.len() {
            self.send(&bytes[at..]);
        }
    }

    /// Reads more bytes into the buffer; false on EOF, timeout or reset.
    fn fill(&mut self, deadline: Instant) -> bool {
        if self.eof {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let wait = (deadline - now).max(Duration::from_millis(1));
        self.stream
            .set_read_timeout(Some(wait))
            .expect("set_read_timeout");
        let mut b = [0u8; 65536];
        match self.stream.read(&mut b) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(_) => {
                self.eof = true;
                false
            }
        }
    }

    /// Reads exactly `n` bytes or fails at the deadline.
    pub fn read_n(&mut self, n: usize, timeout: Duration) -> Result<Vec<u8>, Vec<u8>> {
        let deadline = Instant::now() + timeout;
        while self.buf.len() < n {
            if !self.fill(deadline) && (self.eof || Instant::now() >= deadline) {
                return Err(std::mem::take(&mut self.buf));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Asserts that the next bytes from the server are exactly `expected`.
    #[track_caller]
    pub fn read_exact_reply(&mut self, expected: &[u8]) {
        self.read_exact_reply_within(expected, REPLY_TIMEOUT)
    }

    #[track_caller]
    pub fn read_exact_reply_within(&mut self, expected: &[u8], timeout: Duration) {
        match self.read_n(expected.len(), timeout) {
            Ok(got) => {
                if got != expected {
                    panic!(
                        "reply mismatch\n  expected: {}\n  got:      {}",
                        esc(expected),
                        esc(&got)
                    );
                }
            }
            Err(partial) => panic!(
                "reply incomplete ({}) after {timeout:?}\n  expected: {}\n  got:      {}",
                if self.eof { "EOF" } else { "timeout" },
                esc(expected),
                esc(&partial)
            ),
        }
    }

    /// Sends `cmd` and asserts the reply bytes.
    #[track_caller]
    pub fn request(&mut self, cmd: &[u8], expected: &[u8]) {
        self.send(cmd);
        self.read_exact_reply(expected);
    }

    /// Reads up to and including the first occurrence of `pattern`.
    pub fn read_until(&mut self, pattern: &[u8], timeout: Duration) -> Result<Vec<u8>, Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut searched = 0;
        loop {
            if let Some(pos) = find(&self.buf[searched..], pattern) {
                let end = searched + pos + pattern.len();
                return Ok(self.buf.drain(..end).collect());
            }
            searched = self
                .buf
                .len()
                .saturating_sub(pattern.len().saturating_sub(1));
            if !self.fill(deadline) && (self.eof || Instant::now() >= deadline) {
                return Err(std::mem::take(&mut self.buf));
            }
        }
    }

    /// Reads one line (up to and including `\n`).
    #[track_caller]
    pub fn read_line(&mut self) -> Vec<u8> {
        match self.read_until(b"\n", REPLY_TIMEOUT) {
            Ok(l) => l,
            Err(partial) => panic!("no complete line; got {}", esc(&partial)),
        }
    }

    /// Asserts the server closes the connection without sending anything more.
    #[track_caller]
    pub fn expect_eof(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.eof {
            if !self.fill(deadline) && !self.eof && Instant::now() >= deadline {
                panic!(
                    "connection still open after {timeout:?}; received {}",
                    esc(&self.buf)
                );
            }
        }
        assert!(
            self.buf.is_empty(),
            "expected EOF with no reply, got {}",
            esc(&self.buf)
        );
    }

    /// True once the server has closed its side.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a `stats` reply into (name, value) pairs.
pub fn parse_stats(reply: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(reply);
    text.lines()
        .filter_map(|l| l.strip_prefix("STAT "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Sends `stats` and returns the value of `name`.
pub fn stat(conn: &mut Conn, name: &str) -> Option<String> {
    conn.send(b"stats\r\n");
    let reply = conn
        .read_until(b"END\r\n", REPLY_TIMEOUT)
        .unwrap_or_else(|p| panic!("stats reply incomplete: {}", esc(&p)));
    parse_stats(&reply)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Output of a tool run by `run_tool`.
#[derive(Debug)]
pub struct ToolRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs an external tool to completion, killing it if it exceeds `timeout`.
pub fn run_tool(cmd: Command, timeout: Duration) -> ToolRun {
    let logs = tempfile::Builder::new()
        .prefix("store-e2e-tool")
        .tempdir()
        .expect("tempdir");
    let shown = format!("{cmd:?}");
    let mut proc = spawn_logged(cmd, logs.path(), "tool");
    let status = proc.wait_exit(timeout);
    let stdout =
        String::from_utf8_lossy(&std::fs::read(&proc.stdout_path).unwrap_or_default()).into_owned();
    let stderr = proc.stderr_text();
    match status {
        Some(status) => ToolRun {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{shown} did not finish within {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ),
    }
}

/// Whether `program args...` runs and exits 0 (a client is installed).
pub fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|out| out.status.success())
}

/// A client's smoke test (tests/clients/) takes well under a second; a
/// hang fails within this.
pub const SMOKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a client's smoke test, `what` against `addr`, and checks that it
/// passed (exit 0, `ok: N checks`); prints that line.
pub fn expect_smoke_ok(what: &str, addr: std::net::SocketAddr, cmd: Command) {
    let run = run_tool(cmd, SMOKE_TIMEOUT);
    assert!(
        run.status.success() && run.stdout.starts_with("ok: "),
        "{what} against {addr}: {}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    println!("{what} against {addr}: {}", run.stdout.trim());
}

/// Resident memory of a process in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS:")
}

/// The most resident memory a process has had, in bytes.
pub fn peak_rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmHWM:")
}

fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib * 1024
}

/// A numeric stat from a parsed `stats` reply.
pub fn stat_u64(stats: &std::collections::BTreeMap<String, String>, name: &str) -> u64 {
    stats
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("stat {name} in {stats:?}"))
}

/// The server's memcached address.
pub fn addr_of(server: &StoreServer) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], server.port))
}

/// Bytes in MiB, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The server's process id.
pub fn pid_of(server: &StoreServer) -> u32 {
    server.proc.as_ref().and_then(|p| p.pid()).expect("pid")
}

/// Reads a `gets` reply for one key and returns its CAS unique.
pub fn gets_unique(c: &mut Conn, key: &str) -> u64 {
    c.send(format!("gets {key}\r\n").as_bytes());
    let line = c.read_line();
    let text = String::from_utf8(line.clone()).expect("ascii VALUE line");
    let parts: Vec<&str> = text.trim_end().split(' ').collect();
    assert!(
        parts.len() == 5 && parts[0] == "VALUE" && parts[1] == key,
        "bad gets line {}",
        esc(&line)
    );
    let bytes: usize = parts[3].parse().expect("bytes");
    c.read_n(bytes + 2, REPLY_TIMEOUT).expect("gets data");
    c.read_exact_reply(b"END\r\n");
    parts[4].parse().expect("cas unique is a u64")
}

/// Starts `store addsrv -s SOCKET` (a server alone on a Unix socket) with
/// its data and logs under `dir`, and waits until the socket answers.
pub fn start_unix_server(dir: &Path, socket: &Path, extra: &[&str]) -> ServerProc {
    let mut cmd = Command::new(StoreServer::store_bin());
    cmd.args(["addsrv", "-s"])
        .arg(socket)
        .args(extra)
        .arg("--data-dir")
        .arg(dir.join(format!(
            "data-{}",
            socket.file_name().unwrap_or_default().to_string_lossy()
        )));
    let mut server = spawn_logged(cmd, dir, "unix");
    let up = poll_until(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(socket).is_ok()
    });
    assert!(up, "no socket at {socket:?}: {}", server.stderr_text());
    assert!(server.is_running());
    server
}
