//! `nemesis`: long fault runs against real processes. Starts a cluster (one
//! LB, three servers, each behind a UDP relay) from the `store` binary next
//! to this one, runs rounds of concurrent clients while it kills, pauses and
//! restarts servers and the LB and cuts UDP between them, checks every
//! round's history for linearizability and lost writes, and prints per-round
//! and total figures. Exit code 0: nothing found; 1: a finding (its evidence
//! is kept in the data directory); 2: the run itself failed.
//!
//! ```sh
//! cargo build --release --bin store && cargo run --release --bin nemesis -- --minutes 30 --seed 7
//! ```
//!
//! The work is `store::nemesis`; this only parses flags, handles Ctrl-C
//! (finish the round's bookkeeping, stop every process) and prints.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use store::nemesis::{self, Config};

#[derive(Parser)]
#[command(about = "Fault runs against a real store cluster, checked for linearizability")]
struct Args {
    /// How long to run (rounds are started until this much time is spent).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Seed for the fault schedule and the clients [default: random].
    #[arg(long)]
    seed: Option<u64>,
    /// Length of one round (fresh keys, faults, heal, final reads, check).
    #[arg(long, default_value_t = 60)]
    round_secs: u64,
    #[arg(long, default_value_t = 3)]
    servers: usize,
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// Keys the clients share at any one time.
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// Seconds the clients stay on one set of keys before moving to fresh
    /// ones (bounds the ops per key the checker must search).
    #[arg(long, default_value_t = 5.0)]
    key_secs: f64,
    /// Where the cluster's data and logs go [default: ./store-data/nemesis-SEED].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep the data directory even when nothing was found.
    #[arg(long)]
    keep: bool,
    /// The `store` binary [default: `store` next to this binary].
    #[arg(long)]
    store_bin: Option<PathBuf>,
    /// Run the LB and every server on a host of its own (a Linux network
    /// namespace, joined to the others by links the nemesis takes down, so
    /// partitions cut TCP forwarding as well as UDP). Needs root and
    /// iproute2; without it, UDP is cut by relays and TCP never is.
    #[arg(long)]
    netns: bool,
    /// LBs: 1, or a group of LBs (3 or 5; with --netns), which the LB
    /// faults and partitions hit, the leading one half the time.
    #[arg(long, default_value_t = 1)]
    lbs: usize,
    /// With a group of LBs: `store remove-lb` an LB and add it back with
    /// `store add-lb` and `--join` among the faults (replace-lb).
    #[arg(long)]
    lb_changes: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("nemesis: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    let exe = match args.store_bin {
        Some(exe) => exe,
        None => std::env::current_exe()
            .context("where this binary is")?
            .with_file_name("store"),
    };
    if !exe.is_file() {
        bail!(
            "no store binary at {} (cargo build --release --bin store, or --store-bin)",
            exe.display()
        );
    }
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from("store-data").join(format!("nemesis-{seed}")));
    if data_dir.exists() {
        bail!(
            "{} exists; remove it or pick --data-dir",
            data_dir.display()
        );
    }
    if !(args.minutes > 0.0 && args.key_secs > 0.0) {
        bail!("--minutes and --key-secs must be positive");
    }
    let mut config = Config::new(
        exe,
        data_dir.clone(),
        seed,
        Duration::from_secs_f64(args.minutes * 60.0),
    );
    config.round = Duration::from_secs(args.round_secs);
    config.servers = args.servers;
    config.clients = args.clients;
    config.keys = args.keys;
    config.key_generation = Duration::from_secs_f64(args.key_secs);
    config.netns = args.netns;
    config.lbs = args.lbs;
    config.lb_changes = args.lb_changes;
    if args.lb_changes && args.lbs < 2 {
        bail!("--lb-changes changes a group of LBs: give --lbs 3 (with --netns)");
    }

    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signal(stop.clone());
    println!(
        "nemesis: seed {seed}, {} minutes in rounds of {}s, {} servers, {} LB(s), {} clients, {} keys at a time (fresh every {}s), cuts by {}",
        args.minutes,
        args.round_secs,
        args.servers,
        args.lbs,
        args.clients,
        args.keys,
        args.key_secs,
        if args.netns { "links between network namespaces" } else { "UDP relays" }
    );
    let started = Instant::now();
    let totals = nemesis::run(&config, &stop, &mut |line| println!("{line}"))?;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    println!(
        "TOTAL seed {seed}: {minutes:.1} minutes, {} rounds\n  {}",
        totals.rounds,
        totals.summary().replace('\n', "\n  ")
    );
    for finding in &totals.findings {
        println!("FINDING: {finding}");
    }
    if totals.clean() {
        if !args.keep {
            let _ = std::fs::remove_dir_all(&data_dir);
        }
        println!("nothing found (replay: --seed {seed})");
    } else {
        println!(
            "evidence and logs kept in {} (replay: --seed {seed})",
            data_dir.display()
        );
    }
    Ok(totals.clean())
}

/// Sets `stop` on SIGINT or SIGTERM, so the run stops its processes itself.
fn stop_on_signal(stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                eprintln!("nemesis: stopping after the current step");
                stop.store(true, Ordering::Relaxed);
            });
        });
    if spawned.is_err() {
        eprintln!("nemesis: cannot watch for Ctrl-C; it will kill the run without cleanup");
    }
}
