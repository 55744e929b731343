//! A deterministic simulator for the replicated store (DESIGN §7a): every
//! server runs the server's own replica host
//! ([`server::replica::host::Host`], the core and everything the
//! replication driver keeps around it) over a simulated disk, network and
//! clock, and the LB runs its sans-IO core ([`lb::core::Core`]) under a
//! simulated LB driver (or, with `lbs`, each LB of a group is a replica of
//! the group's log and the leading one runs the core), on virtual time,
//! with a seeded scheduler that injects faults. Same seed, same run.
//!
//! # Layout
//!
//! - [`rng`]: SplitMix64, the only source of randomness.
//! - `world`: the event queue, virtual time, the network (loss,
//!   duplication, delay, reordering, partitions), the LB's driver and the
//!   fault scheduler.
//! - `node`: one server: its disk (a fsynced prefix and an unsynced tail),
//!   its keystore files (the real codec's bytes, in memory) and its clock,
//!   as the host's `Io`, which checks the invariants of each I/O call.
//! - `client`: clients issuing get/gets/set/add/cas/incr/decr/delete to the
//!   server they believe leads, recording the history for `check`.
//! - `checker`: the invariants, checked after every step.
//! - `lb_group`: with `--lbs 3|5`, the LBs as one group: each LB a replica
//!   of the group's log, the leading one's election core and its driver
//!   (a registry write committed before the actions after it).
//!
//! Nothing here reads the OS clock or an OS random source, and every map
//! that is iterated is ordered, so a seed replays byte for byte.

#![forbid(unsafe_code)]

mod checker;
mod client;
mod lb_group;
mod node;
pub mod rng;
mod world;

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Known-wrong behaviours the simulator must catch (all off by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// The replica core's switches (`server/src/replica/mod.rs`).
    pub replica: server::replica::Bugs,
    /// The driver's: the leader answers reads at once from its applied
    /// state, without a ReadIndex round.
    pub read_without_read_index: bool,
    /// The keystore stream's (`server::replica::snapshot_stream`): the
    /// follower installs the file under the term of the frame that
    /// carried it, not the term of the file's last entry.
    pub frame_term_as_snapshot_term: bool,
    /// The LB group's (`lb_group`): the LB leading the group acts on a
    /// registry it proposed without waiting for it to commit.
    pub lb_acts_before_commit: bool,
}

impl Bugs {
    /// The names the binary and the tests use.
    pub const NAMES: [&'static str; 11] = [
        "commit-on-minority",
        "skip-noop",
        "accept-stale-append",
        "ack-before-fsync",
        "read-without-read-index",
        "promise-during-lease",
        "lease-ignores-holds",
        "snapshot-frame-term",
        "follower-read-before-apply",
        "vote-for-older-log",
        "lb-acts-before-commit",
    ];

    /// The switch named `name` turned on, or `None` for an unknown name.
    pub fn named(name: &str) -> Option<Bugs> {
        let mut bugs = Bugs::default();
        match name {
            "commit-on-minority" => bugs.replica.commit_on_minority = true,
            "skip-noop" => bugs.replica.skip_noop = true,
            "accept-stale-append" => bugs.replica.accept_stale_append = true,
            "ack-before-fsync" => bugs.replica.ack_before_fsync = true,
            "read-without-read-index" => bugs.read_without_read_index = true,
            "promise-during-lease" => bugs.replica.promise_during_lease = true,
            "lease-ignores-holds" => bugs.replica.lease_ignores_holds = true,
            "snapshot-frame-term" => bugs.frame_term_as_snapshot_term = true,
            "follower-read-before-apply" => bugs.replica.follower_read_before_apply = true,
            "vote-for-older-log" => bugs.replica.vote_for_older_log = true,
            "lb-acts-before-commit" => bugs.lb_acts_before_commit = true,
            _ => return None,
        }
        Some(bugs)
    }
}

/// One run's settings.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// Servers in the group: 3 or 5.
    pub servers: usize,
    pub bugs: Bugs,
    /// Virtual milliseconds with faults, then `settle_ms` without.
    pub faults_ms: u64,
    pub settle_ms: u64,
    /// Print every step to stdout.
    pub trace: bool,
    /// Hash the trace (for the determinism test); costs formatting.
    pub trace_hash: bool,
    /// Start from an empty membership and let the first leader bootstrap
    /// the group (DESIGN §3), instead of a group already configured.
    pub bootstrap: bool,
    /// `remove-server` among the faults (in two thirds of the seeds); off,
    /// a seed replays as it did before that fault existed.
    pub remove_server: bool,
    /// The group elects its own leader by vote (the LB group's election,
    /// DESIGN §3b): no LB runs, so no LB faults and no `remove-server`;
    /// in their place the serving leader is cut off from every peer, or
    /// from one follower (which then stands while the others hear it).
    pub by_vote: bool,
    /// LBs: 0 for one LB process (its registry on its own disk), or 3 or 5
    /// LBs as one group (DESIGN §3c): each a replica of the LB group's log
    /// (the same host and core as the servers, ids after theirs), the one
    /// leading it running the election core on the registry the log holds.
    pub lbs: usize,
    /// With a group of LBs: the operator adds LBs (`add-lb`, from
    /// [`LB_SPARES`] spare nodes, ids after the LBs') and removes them
    /// (`remove-lb`, the acting one too) among the faults, one change at a
    /// time (DESIGN §3c).
    pub lb_changes: bool,
}

/// Nodes kept aside for `add-lb` with [`Options::lb_changes`].
pub const LB_SPARES: usize = 2;

impl Options {
    pub fn new(seed: u64, servers: usize) -> Options {
        Options {
            seed,
            servers,
            bugs: Bugs::default(),
            faults_ms: 12_000,
            settle_ms: 6_000,
            trace: false,
            trace_hash: false,
            bootstrap: false,
            remove_server: true,
            by_vote: false,
            lbs: 0,
            lb_changes: false,
        }
    }
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant, by name.
    pub invariant: &'static str,
    pub detail: String,
    /// Virtual time and step at which it was seen.
    pub time_ms: u64,
    pub step: u64,
}

/// What one run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub violation: Option<Violation>,
    pub steps: u64,
    /// Ops in the client history, and how many of them completed.
    pub ops: usize,
    pub ops_completed: usize,
    pub writes_acked: usize,
    pub entries_committed: u64,
    pub leaders: usize,
    pub crashes: u64,
    /// Reads a follower served (after the leader's read index).
    pub follower_reads: u64,
    /// The checker hit a limit (not a failure).
    pub check_unknown: bool,
    /// Hash of the trace, when `trace_hash` was set.
    pub trace_hash: u64,
}

/// Runs one seed. A panic in a core or the simulator is a violation too.
pub fn run(options: &Options) -> Report {
    let result = catch_unwind(AssertUnwindSafe(|| {
        world::World::new(options.clone()).run()
    }));
    match result {
        Ok(report) => report,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".to_string());
            Report {
                seed: options.seed,
                violation: Some(Violation {
                    invariant: "no panic",
                    detail,
                    time_ms: 0,
                    step: 0,
                }),
                ..Report::default()
            }
        }
    }
}

/// The command that replays `options` step by step.
pub fn replay_command(options: &Options) -> String {
    let mut command = format!(
        "cargo run --release -p sim --bin sim -- --seed {} --servers {}",
        options.seed, options.servers
    );
    for name in Bugs::NAMES {
        if Bugs::named(name) == Some(options.bugs) {
            command.push_str(&format!(" --bug {name}"));
        }
    }
    if options.bootstrap {
        command.push_str(" --bootstrap");
    }
    if !options.remove_server {
        command.push_str(" --no-remove-server");
    }
    if options.by_vote {
        command.push_str(" --by-vote");
    }
    if options.lbs > 0 {
        command.push_str(&format!(" --lbs {}", options.lbs));
    }
    if options.lb_changes {
        command.push_str(" --lb-changes");
    }
    command.push_str(" --trace");
    command
}
