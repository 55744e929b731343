//! More real clients against a single server and a follower of a 3-server
//! cluster, each running its smoke test in tests/clients/ (which passes
//! against memcached 1.6 as it must here): meta-memcache (PyPI, the meta
//! protocol only, leases included), php-memcached (Debian, libmemcached:
//! text, binary, and binary with SASL), php-memcache (Debian, PECL's own
//! protocol code, text), Perl's Cache::Memcached::Fast
//! (Debian, text), spymemcached (Debian, Java; text and binary),
//! twemproxy (Debian's nutcracker) spreading the Perl client's keys over
//! two servers, node's `memcached` (npm) running the mocha suite it
//! ships. gomemcache's own tests run alone, in tests/gomemcache.rs.
//!
//! `.ci/run` installs them; locally a missing one is skipped (under CI it
//! fails): `python3` on PATH must import meta_memcache, `php` must load the
//! memcached extension, `perl` must load Cache::Memcached::Fast.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cluster;
use common::*;

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
        .display()
        .to_string()
}

/// Runs `program args... <addr> more...`, a smoke test that must pass.
fn smoke(what: &str, program: &str, args: &[&str], addr: SocketAddr, more: &[&str]) {
    let mut cmd = Command::new(program);
    cmd.args(args).arg(addr.to_string()).args(more);
    expect_smoke_ok(what, addr, cmd);
}

/// Runs `program script` (a smoke test) against a single server and a
/// follower; skipped (a failure under CI) with `install` unless
/// `installed`.
fn smoke_on_a_server_and_a_follower(
    test: &str,
    installed: bool,
    install: &str,
    what: &str,
    program: &str,
    script: &str,
) {
    if !installed {
        return skip(test, install);
    }
    let (_server, _cluster, addrs) = cluster::server_and_follower(&[]);
    for addr in addrs {
        smoke(what, program, &[script], addr, &[]);
    }
}

#[test]
fn meta_memcache_against_a_server_and_a_follower() {
    smoke_on_a_server_and_a_follower(
        "meta_memcache_against_a_server_and_a_follower",
        runs("python3", &["-c", "import meta_memcache"]),
        "python3 does not import meta_memcache (pip install meta-memcache)",
        "meta-memcache",
        "python3",
        &script("meta_smoke.py"),
    );
}

#[test]
fn php_memcached_over_text_binary_and_sasl() {
    let test = "php_memcached_over_text_binary_and_sasl";
    if !runs("php", &["-r", "exit(class_exists('Memcached') ? 0 : 1);"]) {
        return skip(test, "php with the memcached extension not found (apt-get install php8.2-cli php8.2-memcached)");
    }
    let php = script("php_smoke.php");
    let (_server, _cluster, addrs) = cluster::server_and_follower(&[]);
    for addr in addrs {
        for protocol in ["text", "binary"] {
            smoke("php-memcached", "php", &[&php], addr, &[protocol]);
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let pwdb: PathBuf = dir.path().join("sasl-pwdb");
    std::fs::write(&pwdb, "php:s3cret\n").expect("write the password file");
    let pwdb = pwdb.display().to_string();
    let (_server, _cluster, addrs) = cluster::server_and_follower(&["-S", "--sasl-pwdb", &pwdb]);
    for addr in addrs {
        let sasl = ["binary", "php", "s3cret"];
        smoke("php-memcached with SASL", "php", &[&php], addr, &sasl);
    }
}

/// php-memcache (PECL memcache 4.0, its own protocol code) over text. Its
/// binary mode (`memcache.protocol=binary`) is left out: against
/// memcached 1.6.18 it fails this smoke test too (a replace after a failed
/// one reads the failure's reply).
#[test]
fn php_memcache_against_a_server_and_a_follower() {
    smoke_on_a_server_and_a_follower(
        "php_memcache_against_a_server_and_a_follower",
        runs("php", &["-r", "exit(class_exists('Memcache') ? 0 : 1);"]),
        "php with the memcache extension not found (apt-get install php8.2-cli php8.2-memcache)",
        "php-memcache",
        "php",
        &script("php_memcache_smoke.php"),
    );
}

fn perl_client_installed() -> bool {
    runs("perl", &["-MCache::Memcached::Fast", "-e", "1"])
}

#[test]
fn perl_cache_memcached_fast_against_a_server_and_a_follower() {
    smoke_on_a_server_and_a_follower(
        "perl_cache_memcached_fast_against_a_server_and_a_follower",
        perl_client_installed(),
        "perl without Cache::Memcached::Fast (apt-get install libcache-memcached-fast-perl)",
        "Cache::Memcached::Fast",
        "perl",
        &script("perl_smoke.pl"),
    );
}

#[test]
fn twemproxy_spreads_a_clients_keys_over_two_servers() {
    let test = "twemproxy_spreads_a_clients_keys_over_two_servers";
    if !perl_client_installed() || !runs("nutcracker", &["--version"]) {
        return skip(test, "nutcracker or Cache::Memcached::Fast not found (apt-get install nutcracker libcache-memcached-fast-perl)");
    }
    let servers = [StoreServer::start(&[]), StoreServer::start(&[])];
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = free_port();
    let config = format!(
        "pool:\n  listen: 127.0.0.1:{listen}\n  hash: md5\n  distribution: ketama\n  \
         timeout: 2000\n  servers:\n   - 127.0.0.1:{}:1 one\n   - 127.0.0.1:{}:1 two\n",
        servers[0].port, servers[1].port
    );
    let config_path = dir.path().join("nutcracker.yml");
    std::fs::write(&config_path, config).expect("write the config");
    let mut proxy = Command::new("nutcracker");
    proxy
        .arg("-c")
        .arg(&config_path)
        .args(["-s", &free_port().to_string()])
        .arg("-o")
        .arg(dir.path().join("nutcracker.log"));
    let mut proxy = spawn_logged(proxy, dir.path(), "nutcracker");
    let addr: SocketAddr = ([127, 0, 0, 1], listen).into();
    assert!(
        poll_until(Duration::from_secs(10), || std::net::TcpStream::connect(
            addr
        )
        .is_ok()),
        "nutcracker did not listen: {}",
        proxy.stderr_text()
    );
    smoke(
        "Cache::Memcached::Fast through twemproxy",
        "perl",
        &[&script("perl_smoke.pl")],
        addr,
        &[],
    );
    // Keys through the proxy land on both servers (md5 ketama, as
    // libmemcached's consistent hashing; 64 keys split about evenly).
    let mut conn = Conn::connect(listen);
    for i in 0..64 {
        conn.request(
            format!("set spread-{i} 0 0 1\r\nx\r\n").as_bytes(),
            b"STORED\r\n",
        );
    }
    for server in &servers {
        let items: u64 = stat(&mut server.connect(), "curr_items")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            items > 0,
            "a server got none of the keys (ports {} {}, proxy {listen}); nutcracker's log:\n{}",
            servers[0].port,
            servers[1].port,
            std::fs::read_to_string(dir.path().join("nutcracker.log")).unwrap_or_default()
        );
    }
    proxy.kill9();
}

/// Node's `memcached` (npm) ships its mocha suite in the package; its
/// `test/common.js` names the servers by fixed ports (11211-11213), so the
/// suite runs from a copy whose common.js names these instead. Left out:
/// the connection tests (they connect to 11211 itself and time the client's
/// own failover), and "changes lifetime", which expects an item given 1
/// second gone 1.1 s later: here a relative expiry of N seconds lasts N to
/// N + 1 (DESIGN §2), where memcached's gives N - 1 to N.
#[test]
fn node_memcached_passes_its_own_suite_on_servers_and_a_cluster() {
    let test = "node_memcached_passes_its_own_suite_on_servers_and_a_cluster";
    let Some(modules) = std::env::var_os("STORE_NODE_MODULES")
        .map(PathBuf::from)
        .filter(|dir| {
            ["memcached", "mocha", "should"]
                .iter()
                .all(|m| dir.join(m).is_dir())
        })
    else {
        return skip(test, "STORE_NODE_MODULES does not hold memcached, mocha and should (npm install memcached@2.2.2 mocha should)");
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let package = dir.path().join("memcached");
    assert!(
        runs(
            "cp",
            &[
                "-r",
                &modules.join("memcached").display().to_string(),
                &package.display().to_string()
            ]
        ),
        "copy the package"
    );
    let common = package.join("test/common.js");
    let fixed = "exports.servers = {\n    single: testMemcachedHost + ':11211'\n  , multi: [\n      testMemcachedHost + ':11211'\n    , testMemcachedHost + ':11212'\n    , testMemcachedHost + ':11213'\n  ]\n};";
    let ours = "var ports = process.env.MEMCACHED__PORTS.split(',');\nexports.servers = {\n    single: testMemcachedHost + ':' + ports[0]\n  , multi: ports.map(function (p) { return testMemcachedHost + ':' + p; })\n};";
    let text = std::fs::read_to_string(&common).expect("the suite's common.js");
    assert!(text.contains(fixed), "memcached@2.2.2's common.js changed");
    std::fs::write(&common, text.replace(fixed, ours)).expect("write common.js");
    let tests: Vec<String> = std::fs::read_dir(package.join("test"))
        .expect("the suite")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".test.js") && !name.contains("connections"))
        .map(|name| format!("test/{name}"))
        .collect();
    assert!(tests.len() >= 7, "{tests:?}");
    let run_suite = |ports: &[u16]| {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut cmd = Command::new(modules.join(".bin/mocha"));
        cmd.current_dir(&package)
            .args([
                "--require",
                "should",
                "--timeout",
                "10000",
                "--grep",
                "changes lifetime",
                "--invert",
            ])
            .args(&tests)
            .env("NODE_PATH", &modules)
            .env("MEMCACHED__HOST", "127.0.0.1")
            .env("MEMCACHED__PORTS", ports.join(","));
        let run = run_tool(cmd, SMOKE_TIMEOUT);
        let passing = run
            .stdout
            .lines()
            .find(|l| l.trim_end().ends_with("passing") || l.contains(" passing ("));
        assert!(
            run.status.success() && !run.stdout.contains("failing"),
            "node memcached's suite on {ports:?}: {}\nstdout:\n{}\nstderr:\n{}",
            run.status,
            run.stdout,
            run.stderr
        );
        println!(
            "node memcached's suite on {ports:?}: {}",
            passing.unwrap_or("").trim()
        );
    };
    // Three servers alone, as the suite's own setup; then the three
    // servers of a cluster, a follower first (the suite's single server).
    let alone = [
        StoreServer::start(&[]),
        StoreServer::start(&[]),
        StoreServer::start(&[]),
    ];
    run_suite(&alone.iter().map(|s| s.port).collect::<Vec<_>>());
    let cluster = cluster::start_with(3, &[]);
    let (leader, follower) = cluster::leader_and_follower(&cluster);
    let other = cluster
        .servers
        .iter()
        .map(|s| s.port())
        .find(|&p| p != leader.port() && p != follower.port())
        .expect("a third server");
    run_suite(&[follower.port(), leader.port(), other]);
}

#[test]
fn spymemcached_over_text_and_binary_against_a_server_and_a_follower() {
    let test = "spymemcached_over_text_and_binary_against_a_server_and_a_follower";
    let jar =
        std::env::var("SPYMEMCACHED_JAR").unwrap_or("/usr/share/java/spymemcached.jar".into());
    if !Path::new(&jar).is_file() || !runs("javac", &["-version"]) {
        return skip(test, "spymemcached or javac not found (apt-get install libspymemcached-java default-jdk-headless)");
    }
    let classes = tempfile::tempdir().expect("temp dir");
    let out = classes.path().display().to_string();
    assert!(
        runs(
            "javac",
            &["-cp", &jar, "-d", &out, &script("SpySmoke.java")]
        ),
        "javac SpySmoke.java"
    );
    let classpath = format!("{jar}:{out}");
    let (_server, _cluster, addrs) = cluster::server_and_follower(&[]);
    for addr in addrs {
        for protocol in ["text", "binary"] {
            let args = ["-cp", &classpath, "SpySmoke"];
            smoke("spymemcached", "java", &args, addr, &[protocol]);
        }
    }
}
