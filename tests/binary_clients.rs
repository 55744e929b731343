//! Real binary-protocol clients against a single server and against a
//! follower of a 3-server cluster (whose writes go to the leader and whose
//! reads are served after a read index): libmemcached through pylibmc in
//! binary mode (Debian's python3-pylibmc), python-binary-memcached (PyPI),
//! memjs (npm, binary only) and Dalli 3.0.6 (Rails' client; Debian's
//! ruby-dalli, binary only). Each runs the smoke test in tests/clients/
//! (set, get, multi-get where the client has it, add, replace, append,
//! prepend, cas, incr/decr, delete, touch, stats and the failure replies),
//! which passes against memcached 1.6 as it must here.
//!
//! With `-S`, each authenticates with SASL PLAIN first, against a server
//! and a follower (which forwards for it once it authenticated).
//!
//! `.ci/run` installs them; locally a missing client is skipped (under CI
//! it fails): `PYLIBMC_PYTHON` names a python that imports pylibmc (else
//! /usr/bin/python3), `python3` on PATH must import bmemcached, and
//! `STORE_NODE_MODULES` is a node_modules directory holding memjs, and
//! `ruby` must load dalli.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster;
use common::*;

/// One client and how to run its smoke test against an address.
struct Client {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(&'static str, PathBuf)>,
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn python_importing(candidates: &[String], module: &str) -> Option<PathBuf> {
    candidates.iter().find_map(|py| {
        let ok = Command::new(py)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|out| out.status.success());
        ok.then(|| PathBuf::from(py))
    })
}

/// The clients found, or the first one missing.
fn clients() -> Result<Vec<Client>, String> {
    let smoke = scripts().join("binary_smoke.py").display().to_string();
    let pylibmc_python = std::env::var("PYLIBMC_PYTHON").unwrap_or("/usr/bin/python3".into());
    let pylibmc = python_importing(&[pylibmc_python], "pylibmc")
        .ok_or("no python imports pylibmc (apt-get install python3-pylibmc)")?;
    let bmemcached = python_importing(&["python3".into()], "bmemcached")
        .ok_or("python3 does not import bmemcached (pip install python-binary-memcached)")?;
    let node_modules = std::env::var_os("STORE_NODE_MODULES")
        .map(PathBuf::from)
        .filter(|dir| dir.join("memjs").is_dir())
        .ok_or("STORE_NODE_MODULES does not name a node_modules with memjs (npm install memjs)")?;
    let dalli = Command::new("ruby")
        .args(["-e", "require 'dalli'"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !dalli {
        return Err("ruby does not load dalli (apt-get install ruby ruby-dalli)".into());
    }
    Ok(vec![
        Client {
            name: "pylibmc (binary)",
            program: pylibmc,
            args: vec![smoke.clone(), "pylibmc".into()],
            env: Vec::new(),
        },
        Client {
            name: "python-binary-memcached",
            program: bmemcached,
            args: vec![smoke, "bmemcached".into()],
            env: Vec::new(),
        },
        Client {
            name: "memjs",
            program: "node".into(),
            args: vec![scripts().join("memjs_smoke.js").display().to_string()],
            env: vec![("NODE_PATH", node_modules)],
        },
        Client {
            name: "Dalli",
            program: "ruby".into(),
            args: vec![scripts().join("dalli_smoke.rb").display().to_string()],
            env: Vec::new(),
        },
    ])
}

fn run(client: &Client, addr: SocketAddr) {
    run_as(client, addr, None);
}

/// Runs the client's smoke test, authenticating with SASL PLAIN as
/// `user` (user, password) when given.
fn run_as(client: &Client, addr: SocketAddr, user: Option<(&str, &str)>) {
    let mut cmd = Command::new(&client.program);
    cmd.args(&client.args).arg(addr.to_string());
    for (name, value) in &client.env {
        cmd.env(name, value);
    }
    if let Some((user, password)) = user {
        cmd.env("STORE_SASL_USER", user)
            .env("STORE_SASL_PASSWORD", password);
    }
    expect_smoke_ok(client.name, addr, cmd);
}

#[test]
fn binary_clients_against_a_server_and_a_follower() {
    let test = "binary_clients_against_a_server_and_a_follower";
    let clients = match clients() {
        Ok(clients) => clients,
        Err(why) => return skip(test, &why),
    };
    let server = StoreServer::start(&[]);
    let alone: SocketAddr = ([127, 0, 0, 1], server.port).into();
    for client in &clients {
        run(client, alone);
    }
    let cluster = cluster::start(3);
    let (_, follower) = cluster::leader_and_follower(&cluster);
    for client in &clients {
        run(client, follower);
    }
}

#[test]
fn binary_clients_authenticate_with_sasl_on_a_server_and_a_follower() {
    let test = "binary_clients_authenticate_with_sasl_on_a_server_and_a_follower";
    let clients = match clients() {
        Ok(clients) => clients,
        Err(why) => return skip(test, &why),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let pwdb = dir.path().join("sasl-pwdb");
    std::fs::write(&pwdb, "other:x\nsmoke:pa55:word\n").expect("write the password file");
    let pwdb = pwdb.display().to_string();
    let sasl = ["-S", "--sasl-pwdb", pwdb.as_str()];
    let user = Some(("smoke", "pa55:word"));
    let server = StoreServer::start(&sasl);
    let alone: SocketAddr = ([127, 0, 0, 1], server.port).into();
    for client in &clients {
        run_as(client, alone, user);
    }
    let cluster = cluster::start_with(3, &sasl);
    let (_, follower) = cluster::leader_and_follower(&cluster);
    for client in &clients {
        run_as(client, follower, user);
    }
}
