//! TLS (`-Z`, DESIGN §5a "TLS"): the same replies as memcached 1.6.18
//! over TLS, an OpenSSL client (pymemcache) beside rustls, handshake
//! failures counted, client certificates checked when required,
//! certificates refreshed by `refresh_certs`, and a follower forwarding to
//! its leader over TLS. Certificates are made per test with `openssl`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use common::cluster;
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

type TlsConn = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// openssl's words for a new P-256 key without a passphrase.
const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";

/// A test authority, a server certificate for 127.0.0.1 and a client
/// certificate it signed, and a client certificate of another authority.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// `None` (after `skip`) without the openssl command.
    fn make(test: &str) -> Option<Pki> {
        let pki = Pki {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let ext = "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n";
        std::fs::write(pki.path("leaf.ext"), ext).unwrap();
        let made = pki.authority("ca") && pki.authority("rogue-ca");
        if !made {
            skip(test, "openssl not found (apt-get install openssl)");
            return None;
        }
        for (leaf, ca) in [("server", "ca"), ("client", "ca"), ("rogue", "rogue-ca")] {
            assert!(pki.leaf(leaf, ca), "openssl could not sign {leaf}");
        }
        Some(pki)
    }

    /// Runs openssl with `words` (split on spaces) and then `more`.
    fn openssl(&self, words: &str, more: &[&str]) -> bool {
        Command::new("openssl")
            .args(words.split_whitespace())
            .args(more)
            .current_dir(self.dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn authority(&self, name: &str) -> bool {
        let subject = format!("/CN=store test {name}");
        let words = format!("req -x509 {NEW_KEY} -keyout {name}.key -out {name}.pem -days 30");
        self.openssl(&words, &["-subj", &subject])
    }

    /// A certificate for 127.0.0.1 (server and client use) signed by `ca`.
    fn leaf(&self, name: &str, ca: &str) -> bool {
        let request = format!("req {NEW_KEY} -keyout {name}.key -out {name}.csr");
        let sign = format!(
            "x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial \
             -out {name}.pem -days 30 -extfile leaf.ext"
        );
        self.openssl(&request, &["-subj", "/CN=127.0.0.1"]) && self.openssl(&sign, &[])
    }

    /// The server's flags for these certificates.
    fn server_args(&self) -> Vec<String> {
        [
            "-Z",
            "--ssl-chain-cert",
            &self.arg("server.pem"),
            "--ssl-key",
            &self.arg("server.key"),
            "--ssl-ca-cert",
            &self.arg("ca.pem"),
        ]
        .map(String::from)
        .to_vec()
    }

    /// A client trusting the test authority, showing `cert` (a name of
    /// this PKI) when given. ring, as the server uses.
    #[allow(deprecated)]
    fn client(&self, cert: Option<&str>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        Arc::new(match cert {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let chain = CertificateDer::pem_file_iter(self.path(&format!("{name}.pem")))
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        })
    }
}

fn connect(port: u16, config: Arc<rustls::ClientConfig>) -> TlsConn {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let session = rustls::ClientConnection::new(config, name).expect("client session");
    rustls::StreamOwned::new(session, tcp)
}

/// Sends `request` and reads until the reply ends with `end`; `Err` with
/// what came when the connection failed first.
fn exchange(conn: &mut TlsConn, request: &[u8], end: &[u8]) -> Result<Vec<u8>, String> {
    conn.write_all(request).map_err(|e| e.to_string())?;
    conn.flush().map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(end) {
        match conn.read(&mut buf) {
            Ok(0) => return Err(format!("closed after {}", esc(&got))),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{e} after {}", esc(&got))),
        }
    }
    Ok(got)
}

/// Text requests whose replies memcached and this server word the same.
const REQUESTS: &[(&[u8], &[u8])] = &[
    (b"set k 5 0 3\r\nabc\r\n", b"\r\n"),
    (b"get k missing\r\n", b"END\r\n"),
    (b"append k 0 0 2\r\nde\r\n", b"\r\n"),
    (b"add k 0 0 1\r\nx\r\n", b"\r\n"),
    (b"set n 0 0 2\r\n10\r\n", b"\r\n"),
    (b"incr n 5\r\n", b"\r\n"),
    (b"decr n 100\r\n", b"\r\n"),
    (b"touch k 100\r\n", b"\r\n"),
    (b"mg k s f v\r\n", b"abcde\r\n"),
    (b"delete k\r\n", b"\r\n"),
    (b"mg k v\r\n", b"\r\n"),
    (b"bogus\r\n", b"\r\n"),
    (b"mn\r\n", b"MN\r\n"),
];

#[test]
fn tls_clients_get_memcacheds_replies() {
    let test = "tls_clients_get_memcacheds_replies";
    let Some(pki) = Pki::make(test) else { return };
    if memcached_bin().is_none() {
        return skip(
            test,
            "memcached not found in PATH (apt-get install memcached)",
        );
    }
    let options = format!(
        "ssl_chain_cert={},ssl_key={}",
        pki.arg("server.pem"),
        pki.arg("server.key")
    );
    let memcached = Memcached::start(&["-Z", "-o", &options]);
    // memcached's own -o form is taken too.
    let store = StoreServer::start(&["-Z", "-o", &options]);
    let mut theirs = connect(memcached.port, pki.client(None));
    let mut ours = connect(store.port, pki.client(None));
    for &(request, end) in REQUESTS {
        assert_eq!(
            esc(&exchange(&mut ours, request, end).unwrap()),
            esc(&exchange(&mut theirs, request, end).unwrap()),
            "{}",
            esc(request)
        );
    }
    let settings = |conn: &mut TlsConn| {
        let all = exchange(conn, b"stats settings\r\n", b"END\r\n").unwrap();
        String::from_utf8(all)
            .unwrap()
            .lines()
            .filter(|l| {
                [
                    "ssl_enabled ",
                    "ssl_verify_mode ",
                    "ssl_min_version ",
                    "ssl_ca_cert ",
                ]
                .iter()
                .any(|name| l.starts_with(&format!("STAT {name}")))
            })
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(settings(&mut ours), settings(&mut theirs));

    // An OpenSSL client (Python's ssl under pymemcache) as well.
    let Some(python) = python_with_pymemcache() else {
        return skip(test, "python3 with pymemcache not found");
    };
    let script = format!(
        "import ssl\nfrom pymemcache.client.base import Client\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         c = Client(('127.0.0.1', {port}), tls_context=ctx)\n\
         assert c.set('tls', b'over tls') is True\n\
         assert c.get('tls') == b'over tls'\n\
         assert c.incr('missing', 1) is None\n\
         print('ok')\n",
        ca = pki.arg("ca.pem"),
        port = store.port,
    );
    let run = run_tool(
        {
            let mut cmd = Command::new(python);
            cmd.args(["-c", &script]);
            cmd
        },
        REPLY_TIMEOUT,
    );
    assert!(run.status.success() && run.stdout.trim() == "ok", "{run:?}");
}

#[test]
fn a_plain_client_on_a_tls_port_is_a_counted_handshake_error() {
    let test = "a_plain_client_on_a_tls_port_is_a_counted_handshake_error";
    let Some(pki) = Pki::make(test) else { return };
    let args = pki.server_args();
    let store = StoreServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut conn = connect(store.port, pki.client(None));
    let mut handshake_errors = || {
        let stats = exchange(&mut conn, b"stats\r\n", b"END\r\n").unwrap();
        let stats = String::from_utf8(stats).unwrap();
        let line = stats
            .lines()
            .find_map(|l| l.strip_prefix("STAT ssl_handshake_errors "))
            .unwrap_or_else(|| panic!("{stats}"));
        assert!(stats.contains("STAT ssl_new_sessions "), "{stats}");
        line.parse::<u64>().unwrap()
    };
    // The one connection StoreServer::start made to see the port open
    // had no handshake: one error, counted once its task saw it closed.
    assert!(poll_until(REPLY_TIMEOUT, || handshake_errors() == 1));
    // A plain client gets a TLS alert at most, then the connection closes.
    let mut plain = Conn::connect(store.port);
    plain.send(b"version\r\n");
    let rest = plain.read_until(b"\0never\0", REPLY_TIMEOUT).unwrap_err();
    assert!(
        plain.at_eof() && !rest.starts_with(b"VERSION"),
        "{}",
        esc(&rest)
    );
    // Counted when the server's task sees the connection end, which may
    // be just after the client saw it close.
    assert!(
        poll_until(REPLY_TIMEOUT, || handshake_errors() == 2),
        "{}",
        handshake_errors()
    );
}

#[test]
fn client_certificates_are_checked_when_required() {
    let test = "client_certificates_are_checked_when_required";
    let Some(pki) = Pki::make(test) else { return };
    let mut args = pki.server_args();
    args.extend(["--ssl-verify-mode".into(), "2".into()]);
    let store = StoreServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut trusted = connect(store.port, pki.client(Some("client")));
    let reply = exchange(&mut trusted, b"version\r\n", b"\r\n").unwrap();
    assert!(reply.starts_with(b"VERSION "), "{}", esc(&reply));
    for (who, config) in [
        ("no certificate", pki.client(None)),
        ("another authority's", pki.client(Some("rogue"))),
    ] {
        let mut conn = connect(store.port, config);
        let refused = exchange(&mut conn, b"version\r\n", b"\r\n");
        assert!(refused.is_err(), "{who} got in: {refused:?}");
    }
}

#[test]
fn refresh_certs_takes_new_certificates_and_keeps_them_on_a_bad_file() {
    let test = "refresh_certs_takes_new_certificates_and_keeps_them_on_a_bad_file";
    let Some(pki) = Pki::make(test) else { return };
    let args = pki.server_args();
    let store = StoreServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let peer_cert = |conn: &mut TlsConn| {
        exchange(conn, b"version\r\n", b"\r\n").unwrap();
        conn.conn.peer_certificates().unwrap()[0].to_vec()
    };
    let file_cert = || {
        CertificateDer::pem_file_iter(pki.path("server.pem"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    };
    let first = file_cert();
    let mut conn = connect(store.port, pki.client(None));
    assert_eq!(peer_cert(&mut conn), first);
    assert!(pki.leaf("server", "ca"), "re-issue the server certificate");
    let second = file_cert();
    assert_ne!(first, second);
    assert_eq!(
        exchange(&mut conn, b"refresh_certs\r\n", b"\r\n").unwrap(),
        b"OK\r\n"
    );
    assert_eq!(
        peer_cert(&mut connect(store.port, pki.client(None))),
        second
    );
    std::fs::write(pki.path("server.pem"), "not a certificate\n").unwrap();
    let reply = exchange(&mut conn, b"refresh_certs\r\n", b"\r\n").unwrap();
    assert!(reply.starts_with(b"Error "), "{}", esc(&reply));
    assert_eq!(
        peer_cert(&mut connect(store.port, pki.client(None))),
        second
    );
    // Without -Z, memcached's words.
    let plain = StoreServer::start(&[]);
    let mut conn = Conn::connect(plain.port);
    conn.request(b"refresh_certs\r\n", b"Error TLS not enabled\r\n");
}

#[test]
fn a_follower_forwards_to_its_leader_over_tls() {
    let test = "a_follower_forwards_to_its_leader_over_tls";
    let Some(pki) = Pki::make(test) else { return };
    let args = pki.server_args();
    let cluster = cluster::start_with(3, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let (leader, follower) = cluster::leader_and_follower(&cluster);
    let mut conn = connect(follower.port(), pki.client(None));
    // The leader speaks TLS only: a write through the follower reaches it
    // over a TLS lane.
    assert_eq!(
        exchange(&mut conn, b"set k 0 0 2\r\nhi\r\n", b"\r\n").unwrap(),
        b"STORED\r\n"
    );
    assert_eq!(
        exchange(&mut conn, b"get k\r\n", b"END\r\n").unwrap(),
        b"VALUE k 0 2\r\nhi\r\nEND\r\n"
    );
    let mut at_leader = connect(leader.port(), pki.client(None));
    assert_eq!(
        exchange(&mut at_leader, b"get k\r\n", b"END\r\n").unwrap(),
        b"VALUE k 0 2\r\nhi\r\nEND\r\n"
    );
}
