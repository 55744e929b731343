//! `sim`: runs the deterministic simulator over many seeds, or one seed
//! with a step-by-step trace.
//!
//! ```text
//! cargo run --release -p sim --bin sim -- --seeds 10000 [--start S] [--servers 3|5] [--by-vote]
//! cargo run --release -p sim --bin sim -- --seed 42 --trace
//! cargo run --release -p sim --bin sim -- --seeds 500 --bug skip-noop
//! ```

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use sim::{replay_command, run, Bugs, Options};

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation of the store's replica group and LB")]
struct Args {
    /// How many seeds to run, from --start.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Run exactly this seed (implies --seeds 1).
    #[arg(long)]
    seed: Option<u64>,
    /// Servers in the group: 3 or 5.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Print every step of the run (use with --seed).
    #[arg(long)]
    trace: bool,
    /// Turn on a deliberate bug: commit-on-minority, skip-noop,
    /// accept-stale-append, ack-before-fsync, read-without-read-index,
    /// promise-during-lease, lease-ignores-holds, snapshot-frame-term,
    /// follower-read-before-apply, vote-for-older-log (with --by-vote),
    /// lb-acts-before-commit (with --lbs).
    #[arg(long)]
    bug: Option<String>,
    /// Start from an empty membership (the first leader bootstraps).
    #[arg(long)]
    bootstrap: bool,
    /// No remove-server faults (as runs were before they existed).
    #[arg(long)]
    no_remove_server: bool,
    /// The group elects its own leader by vote, with no LB (the LB
    /// group's election, DESIGN §3b).
    #[arg(long)]
    by_vote: bool,
    /// LBs: 0 for one LB process, 3 or 5 for a group of LBs that keeps its
    /// registry in a replicated log and elects its own leader (DESIGN §3c).
    #[arg(long, default_value_t = 0)]
    lbs: usize,
    /// With --lbs: LBs added (from two spare nodes) and removed, the
    /// acting one too, among the faults (`add-lb`, `remove-lb`).
    #[arg(long)]
    lb_changes: bool,
    /// Virtual milliseconds of faults per run.
    #[arg(long, default_value_t = 12_000)]
    faults_ms: u64,
    /// Keep going after a violation.
    #[arg(long)]
    keep_going: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.servers != 3 && args.servers != 5 {
        eprintln!("--servers must be 3 or 5");
        return ExitCode::from(2);
    }
    if ![0, 3, 5].contains(&args.lbs) || (args.lbs > 0 && args.by_vote) {
        eprintln!("--lbs must be 0, 3 or 5, and not with --by-vote (no LB there)");
        return ExitCode::from(2);
    }
    if args.lb_changes && args.lbs == 0 {
        eprintln!("--lb-changes changes a group of LBs: give --lbs 3 or 5");
        return ExitCode::from(2);
    }
    if args.by_vote && args.bootstrap {
        eprintln!("--by-vote starts from a configured group: not with --bootstrap");
        return ExitCode::from(2);
    }
    let bugs = match &args.bug {
        None => Bugs::default(),
        Some(name) => match Bugs::named(name) {
            Some(bugs) => bugs,
            None => {
                eprintln!("unknown bug {name}; one of {:?}", Bugs::NAMES);
                return ExitCode::from(2);
            }
        },
    };
    let (start, count) = match args.seed {
        Some(seed) => (seed, 1),
        None => (args.start, args.seeds),
    };
    let started = Instant::now();
    let (mut steps, mut ops, mut acked, mut committed, mut crashes, mut unknown) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut follower_reads = 0u64;
    let mut failures = 0u64;
    let mut ran = 0u64;
    for seed in start..start + count {
        let mut options = Options::new(seed, args.servers);
        options.bugs = bugs;
        options.trace = args.trace;
        options.bootstrap = args.bootstrap;
        options.remove_server = !args.no_remove_server;
        options.by_vote = args.by_vote;
        options.lbs = args.lbs;
        options.lb_changes = args.lb_changes;
        options.faults_ms = args.faults_ms;
        let report = run(&options);
        ran += 1;
        steps += report.steps;
        ops += report.ops as u64;
        acked += report.writes_acked as u64;
        committed += report.entries_committed;
        crashes += report.crashes;
        follower_reads += report.follower_reads;
        unknown += u64::from(report.check_unknown);
        if let Some(v) = &report.violation {
            failures += 1;
            println!(
                "FAIL seed {seed}: {} at {} ms, step {}: {}",
                v.invariant, v.time_ms, v.step, v.detail
            );
            println!("  replay: {}", replay_command(&options));
            if !args.keep_going {
                break;
            }
        }
        if ran.is_multiple_of(1000) {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "{ran} seeds, {failures} failed, {:.1} seeds/s",
                ran as f64 / secs
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{ran} seeds ({}..{}) with {} servers in {secs:.1} s: {:.1} seeds/s; {failures} failed",
        start,
        start + ran,
        args.servers,
        ran as f64 / secs
    );
    println!(
        "totals: {steps} steps, {ops} client ops, {acked} writes acknowledged, {committed} entries committed, {follower_reads} reads served by followers, {crashes} crashes; checker gave up on {unknown} histories"
    );
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
