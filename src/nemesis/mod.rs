//! Fault tests with real processes: a cluster of `store` processes on
//! loopback (or each on a host of its own, `--netns`), concurrent clients
//! recording a history, and a nemesis that kills, pauses and restarts
//! servers and the LB and cuts UDP between them (or the links, TCP too);
//! every history goes to the `check` crate's linearizability checker, and
//! after every round each key gets a final read through every server, so
//! every acknowledged write must still be explained by what the cluster
//! holds at the end.
//!
//! Shared by `tests/nemesis.rs` (a short run under CI) and the `nemesis`
//! binary (long runs: `cargo run --release --bin nemesis -- --minutes 30`).
//!
//! # Layout
//!
//! - `relay`: userspace UDP relays in front of every node; how UDP is cut
//!   without root.
//! - `links`: how a cut is made: by the relays, or by taking the link
//!   between two hosts (network namespaces, `crate::netns`) down.
//! - `cluster`: the LB and server processes, their signals and restarts.
//! - `faults`: the fault kinds, their targets, and how each is undone.
//! - `workload`: the clients, their requests and replies, the history.
//! - this file: rounds (faults while clients run, heal, converge, final
//!   reads, check) and the report.
//!
//! # A round
//!
//! Each round uses fresh keys, so its history is complete on its own (the
//! checker assumes every key starts empty) and the cluster, its logs and
//! keystore files carry on from round to round. Faults follow one another
//! while the clients run: inject, hold, undo, a quiet spell. Then every
//! fault is healed, the clients run a little longer against a healthy
//! cluster and stop, the servers must agree on a leader and catch up, and
//! each key is read with `gets` through every server. Per key the history
//! is checked without the final reads (a failure is a linearizability
//! violation) and with them (a failure there alone means the final value
//! does not explain the acknowledged writes: a lost write).

pub mod cluster;
pub mod faults;
pub mod links;
pub mod relay;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use check::{Call, ClientId, History, Op, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use cluster::{Cluster, ClusterConfig, RunState};
use faults::{FaultKind, Nemesis};
use workload::{Outcome, Recorder, Workload, WorkloadConfig};

/// Final reads come from clients numbered from here (one per server).
const FINAL_CLIENT_BASE: u32 = 1_000_000;
/// How long the servers get to agree on a leader and catch up after a round.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(30);
/// How long one final read may keep retrying.
const FINAL_READ_DEADLINE: Duration = Duration::from_secs(20);
/// Pause between retries of a final read and convergence polls.
const RETRY: Duration = Duration::from_millis(50);
/// Granularity of the nemesis's sleeps, so a stop request is seen soon.
const SLEEP_SLICE: Duration = Duration::from_millis(50);
/// Rounds shorter than this are not started (the run's end).
const ROUND_MIN: Duration = Duration::from_secs(10);

/// What a run does.
#[derive(Clone, Debug)]
pub struct Config {
    /// The `store` binary.
    pub exe: PathBuf,
    /// Data directories, logs and, for findings, histories go here.
    pub data_dir: PathBuf,
    pub seed: u64,
    pub servers: usize,
    pub clients: u32,
    /// Keys the clients share at any one time.
    pub keys: usize,
    /// How long the clients stay on one set of keys (see
    /// [`WorkloadConfig::key_generation`]).
    pub key_generation: Duration,
    /// The run stops starting rounds after this long...
    pub duration: Duration,
    /// ...or after this many rounds.
    pub rounds_max: u64,
    /// How long clients run in one round, faults included.
    pub round: Duration,
    /// Faults stop this long before a round ends; the clients run on
    /// against the healed cluster.
    pub tail: Duration,
    /// A fault holds for a random time in this range (ms).
    pub hold_ms: (u64, u64),
    /// Then nothing happens for a random time in this range (ms).
    pub quiet_ms: (u64, u64),
    /// The chance that a second fault of another kind joins the first.
    pub second_fault_probability: f64,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub server_threads: usize,
    pub reply_timeout: Duration,
    /// Every node on a host of its own, cuts by links taken down, TCP
    /// included (root; see `links`), instead of UDP relays.
    pub netns: bool,
    /// LBs: 1, or a group of LBs (with `netns`; DESIGN §3c), whose leader
    /// the LB faults pick half the time.
    pub lbs: usize,
    /// With a group of LBs: LBs removed and added back among the faults
    /// (`replace-lb`).
    pub lb_changes: bool,
}

impl Config {
    /// Defaults for a run of `duration` (the binary's; the CI test narrows
    /// them).
    pub fn new(exe: PathBuf, data_dir: PathBuf, seed: u64, duration: Duration) -> Config {
        Config {
            exe,
            data_dir,
            seed,
            servers: 3,
            clients: 4,
            keys: 8,
            key_generation: Duration::from_secs(5),
            duration,
            rounds_max: u64::MAX,
            round: Duration::from_secs(60),
            tail: Duration::from_secs(3),
            hold_ms: (500, 5000),
            quiet_ms: (500, 3000),
            second_fault_probability: 0.25,
            heartbeat_ms: 100,
            election_timeout_ms: 1000,
            server_threads: 2,
            reply_timeout: Duration::from_secs(4),
            netns: false,
            lbs: 1,
            lb_changes: false,
        }
    }
}

/// Totals of a run, or of one round.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub rounds: u64,
    pub ops: u64,
    pub ok: u64,
    pub fail: u64,
    pub unknown: u64,
    pub acknowledged_writes: u64,
    pub final_reads: u64,
    pub faults: BTreeMap<FaultKind, u64>,
    pub keys_checked: u64,
    /// Keys whose history is not linearizable.
    pub violations: u64,
    /// Keys whose history is, but not with the final reads.
    pub lost_writes: u64,
    /// Keys the checker gave up on (a limit, not a verdict).
    pub checker_unknown: u64,
    /// Rounds after which the servers did not agree and catch up in time.
    pub not_converged: u64,
    /// Final reads that got no answer before their deadline.
    pub final_reads_missing: u64,
    pub unexpected_exits: u64,
    pub relay_forwarded: u64,
    pub relay_dropped: u64,
    /// Datagrams the LB sent from its leader probe socket (see `relay`).
    pub relay_lb_probe: u64,
    /// Each violation, lost write, checker give-up or crash, in words, with
    /// where its evidence was written.
    pub findings: Vec<String>,
}

impl Totals {
    /// A process exit the cluster noticed: a finding unless it was an LB
    /// stopping as removed ([`cluster::Exit`]).
    fn count_exit(&mut self, round: u64, exit: &cluster::Exit) {
        if exit.finding {
            self.unexpected_exits += 1;
            self.findings.push(format!("round {round}: {}", exit.what));
        }
    }

    /// Whether nothing wrong was found (liveness included).
    pub fn clean(&self) -> bool {
        self.violations == 0
            && self.lost_writes == 0
            && self.checker_unknown == 0
            && self.unexpected_exits == 0
            && self.not_converged == 0
            && self.final_reads_missing == 0
    }

    fn add(&mut self, round: &Totals) {
        self.rounds += round.rounds;
        self.ops += round.ops;
        self.ok += round.ok;
        self.fail += round.fail;
        self.unknown += round.unknown;
        self.acknowledged_writes += round.acknowledged_writes;
        self.final_reads += round.final_reads;
        for (kind, n) in &round.faults {
            *self.faults.entry(*kind).or_default() += n;
        }
        self.keys_checked += round.keys_checked;
        self.violations += round.violations;
        self.lost_writes += round.lost_writes;
        self.checker_unknown += round.checker_unknown;
        self.not_converged += round.not_converged;
        self.final_reads_missing += round.final_reads_missing;
        self.unexpected_exits += round.unexpected_exits;
        self.relay_forwarded += round.relay_forwarded;
        self.relay_dropped += round.relay_dropped;
        self.relay_lb_probe += round.relay_lb_probe;
        self.findings.extend(round.findings.iter().cloned());
    }

    /// One paragraph: ops, outcomes, faults by kind, verdicts.
    pub fn summary(&self) -> String {
        let faults: u64 = self.faults.values().sum();
        // Without relays (hosts cut by links) there is nothing to count.
        let relays = if self.relay_forwarded == 0 {
            String::new()
        } else {
            format!(
                ", relayed datagrams {} (dropped by cuts {}, from the LB's probe {})",
                self.relay_forwarded, self.relay_dropped, self.relay_lb_probe
            )
        };
        let by_kind = FaultKind::ALL
            .iter()
            .map(|k| format!("{k} {}", self.faults.get(k).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{} ops (ok {}, fail {}, unknown {}; {} acknowledged writes), {} final reads\n\
             {faults} faults: {by_kind}\n\
             {} keys checked: {} linearizability violations, {} lost writes, {} checker gave up\n\
             not converged {}, final reads missing {}, unexpected exits {}{}",
            self.ops,
            self.ok,
            self.fail,
            self.unknown,
            self.acknowledged_writes,
            self.final_reads,
            self.keys_checked,
            self.violations,
            self.lost_writes,
            self.checker_unknown,
            self.not_converged,
            self.final_reads_missing,
            self.unexpected_exits,
            relays,
        )
    }
}

/// Runs rounds until the duration or round budget is spent or `stop` is
/// set; `say` gets progress lines (per fault and per round). Returns the
/// totals; the caller judges them (see [`Totals::clean`]).
pub fn run(
    config: &Config,
    stop: &AtomicBool,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<Totals> {
    let started = Instant::now();
    let mut cluster = Cluster::start(&ClusterConfig {
        exe: config.exe.clone(),
        data_dir: config.data_dir.clone(),
        servers: config.servers,
        heartbeat_ms: config.heartbeat_ms,
        election_timeout_ms: config.election_timeout_ms,
        server_threads: config.server_threads,
        netns: config.netns,
        lbs: config.lbs,
    })?;
    let describe = |nodes: &mut dyn Iterator<Item = usize>| {
        nodes
            .map(|n| {
                format!(
                    "{} {} ({})",
                    cluster.name(n),
                    cluster.tcp(n),
                    cluster.net.describe(n)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    say(&format!(
        "cluster up in {:.1}s: {}, servers {}; data and logs in {}",
        started.elapsed().as_secs_f64(),
        describe(&mut cluster.lb_nodes().into_iter()),
        describe(&mut (1..=cluster.servers())),
        config.data_dir.display(),
    ));
    let kinds = FaultKind::available(cluster.net.one_way(), config.lb_changes && config.lbs > 1);
    let mut nemesis = Nemesis::new(StdRng::seed_from_u64(config.seed), kinds);
    let mut totals = Totals::default();
    let mut round = 0u64;
    while round < config.rounds_max && !stop.load(Relaxed) {
        let left = config.duration.saturating_sub(started.elapsed());
        let length = config.round.min(left);
        if length < ROUND_MIN.min(config.round) {
            break;
        }
        round += 1;
        let result = run_round(config, round, length, &mut cluster, &mut nemesis, stop, say)?;
        say(&format!(
            "round {round}: {}",
            result.summary().replace('\n', "\n  ")
        ));
        for finding in &result.findings {
            say(&format!("FINDING: {finding}"));
        }
        totals.add(&result);
    }
    Ok(totals)
}

/// One round on fresh keys; see the module doc.
fn run_round(
    config: &Config,
    round: u64,
    length: Duration,
    cluster: &mut Cluster,
    nemesis: &mut Nemesis,
    stop: &AtomicBool,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<Totals> {
    let mut result = Totals {
        rounds: 1,
        ..Totals::default()
    };
    let relayed_before = relay_counts(cluster);
    let recorder = Arc::new(Recorder::new(Instant::now()));
    let mut events: Vec<(u64, String)> = Vec::new();
    let mut event = |recorder: &Recorder, text: String, say: &mut dyn FnMut(&str)| {
        let ns = recorder.now_ns();
        say(&format!("  [r{round} {:7.3}s] {text}", ns as f64 / 1e9));
        events.push((ns, text));
    };
    let workload = Workload::start(
        &WorkloadConfig {
            clients: config.clients,
            key_prefix: format!("r{round}"),
            keys: config.keys,
            key_generation: config.key_generation,
            servers: cluster.server_addrs(),
            reply_timeout: config.reply_timeout,
            seed: config.seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            first_client: u32::try_from(round).unwrap_or(u32::MAX / 2) * config.clients,
        },
        recorder.clone(),
    )?;

    let faults_end = Instant::now() + length.saturating_sub(config.tail);
    let quiet = |nemesis: &mut Nemesis| {
        Duration::from_millis(
            nemesis
                .rng()
                .gen_range(config.quiet_ms.0..=config.quiet_ms.1),
        )
    };
    let first_quiet = quiet(nemesis);
    sleep_unless(first_quiet, stop);
    while !stop.load(Relaxed) {
        let hold =
            Duration::from_millis(nemesis.rng().gen_range(config.hold_ms.0..=config.hold_ms.1));
        if Instant::now() + hold >= faults_end {
            break;
        }
        let kind = nemesis.next_kind();
        let mut active = vec![nemesis.inject(kind, cluster)?];
        if nemesis.rng().gen_bool(config.second_fault_probability) {
            let second = nemesis.next_kind();
            if second != kind {
                active.push(nemesis.inject(second, cluster)?);
            }
        }
        for a in &active {
            *result.faults.entry(a.kind).or_default() += 1;
            event(&recorder, format!("{}: {}", a.kind, a.what), say);
        }
        sleep_unless(hold, stop);
        for a in active.iter().rev() {
            faults::undo(a, cluster)?;
        }
        event(
            &recorder,
            format!("healed after {:.1}s", hold.as_secs_f64()),
            say,
        );
        for exit in cluster.reap_unexpected()? {
            event(&recorder, exit.what.clone(), say);
            result.count_exit(round, &exit);
        }
        let pause = quiet(nemesis);
        sleep_unless(
            pause.min(faults_end.saturating_duration_since(Instant::now())),
            stop,
        );
    }
    cluster.net.heal();
    cluster.heal_processes()?;
    sleep_unless(
        faults_end.saturating_duration_since(Instant::now()) + config.tail,
        stop,
    );
    workload.stop();
    event(&recorder, "clients stopped".to_string(), say);

    let converge_started = Instant::now();
    let converged = converge(cluster);
    match converged {
        Some(index) => event(
            &recorder,
            format!(
                "servers agree on a leader and applied index {index} after {:.1}s",
                converge_started.elapsed().as_secs_f64()
            ),
            say,
        ),
        None => {
            result.not_converged += 1;
            let text = format!(
                "servers did not agree and catch up within {CONVERGE_DEADLINE:?}: {}",
                describe_servers(cluster)
            );
            event(&recorder, text.clone(), say);
            result.findings.push(format!("round {round}: {text}"));
        }
    }
    for exit in cluster.reap_unexpected()? {
        event(&recorder, exit.what.clone(), say);
        result.count_exit(round, &exit);
    }

    let mut ops = recorder.take();
    let tally = &recorder.tally;
    result.ok = tally.ok.load(Relaxed);
    result.fail = tally.fail.load(Relaxed);
    result.unknown = tally.unknown.load(Relaxed);
    result.ops = result.ok + result.fail + result.unknown;
    result.acknowledged_writes = tally.acknowledged_writes.load(Relaxed);
    let keys: Vec<String> = ops
        .iter()
        .map(|op| String::from_utf8_lossy(&op.key).into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();

    for key in &keys {
        for server in 1..=cluster.servers() {
            match final_read(cluster, server, key, &recorder) {
                Some(op) => {
                    result.final_reads += 1;
                    ops.push(op);
                }
                None => {
                    result.final_reads_missing += 1;
                    result.findings.push(format!(
                        "round {round}: no final read of {key} through {} within {FINAL_READ_DEADLINE:?}",
                        cluster.name(server)
                    ));
                }
            }
        }
    }
    let check_started = Instant::now();
    for key in &keys {
        result.keys_checked += 1;
        let on_key: Vec<Op> = ops
            .iter()
            .filter(|op| op.key == key.as_bytes())
            .cloned()
            .collect();
        let workload_only: Vec<Op> = on_key
            .iter()
            .filter(|op| op.client.0 < FINAL_CLIENT_BASE)
            .cloned()
            .collect();
        let (verdict, with_finals) = match check_ops(workload_only) {
            Verdict::Linearizable => (check_ops(on_key.clone()), true),
            other => (other, false),
        };
        let what = match (&verdict, with_finals) {
            (Verdict::Linearizable, _) => continue,
            (Verdict::NotLinearizable { .. }, false) => {
                result.violations += 1;
                "linearizability violation"
            }
            (Verdict::NotLinearizable { .. }, true) => {
                result.lost_writes += 1;
                "lost write (the history is linearizable, the final reads are not explained)"
            }
            (Verdict::Unknown { .. }, _) => {
                result.checker_unknown += 1;
                "checker gave up"
            }
        };
        let path = config
            .data_dir
            .join(format!("finding-round{round}-{key}.txt"));
        let logs: Vec<PathBuf> = (0..cluster.nodes())
            .map(|n| cluster.log_path(n).to_path_buf())
            .collect();
        let evidence = evidence(config, round, key, &on_key, &verdict, &events, &logs);
        let written = std::fs::write(&path, &evidence).is_ok();
        result.findings.push(format!(
            "round {round}, key {key}: {what} (seed {}); {}\n{}",
            config.seed,
            if written {
                format!("history and nemesis events in {}", path.display())
            } else {
                "could not write the evidence file".to_string()
            },
            explanation(&verdict),
        ));
    }
    let relayed = relay_counts(cluster);
    result.relay_forwarded = relayed.0 - relayed_before.0;
    result.relay_dropped = relayed.1 - relayed_before.1;
    result.relay_lb_probe = relayed.2 - relayed_before.2;
    say(&format!(
        "  [r{round}] checked {} keys ({} ops) in {:.1}s",
        keys.len(),
        ops.len(),
        check_started.elapsed().as_secs_f64()
    ));
    Ok(result)
}

/// The relays' counts so far: datagrams forwarded, dropped by cuts, from
/// the LB's probe (all 0 without relays).
fn relay_counts(cluster: &Cluster) -> (u64, u64, u64) {
    cluster.net.counters().map_or((0, 0, 0), |c| {
        (
            c.forwarded.load(Relaxed),
            c.dropped.load(Relaxed),
            c.lb_probe.load(Relaxed),
        )
    })
}

/// Checks one key's ops. A history that is not well formed would be a bug
/// here, not in the store, and says so.
fn check_ops(ops: Vec<Op>) -> Verdict {
    match History::new(ops) {
        Ok(history) => check::check_with(&history, &check::Limits::DEFAULT).verdict,
        Err(e) => panic!("the recorder made a malformed history: {e}"),
    }
}

fn explanation(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Linearizable => String::new(),
        Verdict::NotLinearizable { witness, .. } => witness.explanation.clone(),
        Verdict::Unknown { reason, .. } => format!("{reason:?}"),
    }
}

/// The text written for a finding: the verdict, the key's whole history in
/// the checker's numbering, and the nemesis's events on the same clock.
fn evidence(
    config: &Config,
    round: u64,
    key: &str,
    ops: &[Op],
    verdict: &Verdict,
    events: &[(u64, String)],
    logs: &[PathBuf],
) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(text, "seed {} round {round} key {key}", config.seed);
    let _ = writeln!(text, "{}", explanation(verdict));
    let _ = writeln!(
        text,
        "history (op #i is the checker's #i; final reads are clients >= {FINAL_CLIENT_BASE}):"
    );
    for (i, op) in ops.iter().enumerate() {
        let _ = writeln!(text, "  #{i} {op}");
    }
    let _ = writeln!(text, "nemesis events (ns on the history's clock):");
    for (ns, what) in events {
        let _ = writeln!(text, "  {ns} {what}");
    }
    let _ = writeln!(text, "process logs:");
    for log in logs {
        let _ = writeln!(text, "  {}", log.display());
    }
    text
}

/// Waits until one server leads, every server is up and in its term, and
/// every one has applied everything the leader committed. Returns that
/// index.
fn converge(cluster: &Cluster) -> Option<u64> {
    let deadline = Instant::now() + CONVERGE_DEADLINE;
    while Instant::now() < deadline {
        let rows: Vec<BTreeMap<String, String>> = (1..=cluster.servers())
            .map(|n| cluster::stats(cluster.tcp(n)))
            .collect();
        let field = |row: &BTreeMap<String, String>, name: &str| -> Option<u64> {
            row.get(name).and_then(|v| v.parse().ok())
        };
        let leaders: Vec<&BTreeMap<String, String>> = rows
            .iter()
            .filter(|r| r.get("repl_role").map(String::as_str) == Some("leader"))
            .collect();
        if let [leader] = leaders.as_slice() {
            let term = field(leader, "repl_term");
            let commit = field(leader, "repl_commit_index");
            let caught_up = rows.iter().all(|r| {
                field(r, "repl_term") == term
                    && matches!(
                        r.get("repl_role").map(String::as_str),
                        Some("leader" | "follower")
                    )
                    && field(r, "repl_applied_index") >= commit
            });
            if caught_up {
                return commit;
            }
        }
        std::thread::sleep(RETRY);
    }
    None
}

fn describe_servers(cluster: &Cluster) -> String {
    (1..=cluster.servers())
        .map(|n| {
            let s = cluster::stats(cluster.tcp(n));
            let get = |k: &str| s.get(k).cloned().unwrap_or_else(|| "?".into());
            format!(
                "{} {:?} role {} term {} commit {} applied {}",
                cluster.name(n),
                cluster.state(n),
                get("repl_role"),
                get("repl_term"),
                get("repl_commit_index"),
                get("repl_applied_index")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `gets key` through `server` until it answers, as a completed op of that
/// server's final client.
fn final_read(cluster: &Cluster, server: usize, key: &str, recorder: &Recorder) -> Option<Op> {
    let client = ClientId(FINAL_CLIENT_BASE + server as u32);
    let deadline = Instant::now() + FINAL_READ_DEADLINE;
    debug_assert_eq!(cluster.state(server), RunState::Running);
    while Instant::now() < deadline {
        if let Some(mut stream) = workload::connect(cluster.tcp(server), RETRY * 40) {
            let invoked_ns = recorder.now_ns();
            if let Outcome::Ok(ret) = workload::exchange(&mut stream, key, &Call::Gets) {
                let completed_ns = recorder.now_ns();
                return Some(Op::completed(
                    client,
                    key,
                    Call::Gets,
                    invoked_ns,
                    completed_ns,
                    ret,
                ));
            }
        }
        std::thread::sleep(RETRY);
    }
    None
}

/// Sleeps for `duration` in slices, returning early once `stop` is set.
fn sleep_unless(duration: Duration, stop: &AtomicBool) {
    let end = Instant::now() + duration;
    while !stop.load(Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(SLEEP_SLICE));
    }
}
