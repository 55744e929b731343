//! The load balancer (DESIGN §1, §3, §3a): it registers servers, heartbeats
//! them, runs elections that a majority of servers must promise to, tells
//! the leader to add and remove servers, and answers clients' `get-servers`.
//!
//! # Layout
//!
//! - [`cluster_file`]: the `cluster` file (cluster id and MAC secret), made
//!   on the LB's first start and read by servers via `--cluster-file`.
//! - [`registry`]: the LB's durable state (highest term, named leader,
//!   membership) and the one file that holds it.
//! - [`core`]: the election and membership state machine; sans-IO, time is
//!   an input, its outputs are persist and send actions.
//! - [`discovery`]: the TCP discovery protocol (`get-servers`, `stats`,
//!   `lbs`, `remove-server`, `add-lb`, `remove-lb`) as pure parse and
//!   encode functions.
//! - [`group`]: several LBs as one group: the registry in a replicated
//!   log (the data servers' replica core), and who among them acts.
//! - [`join`]: how an LB added at run time finds the group's list.
//! - [`driver`]: the only code that touches sockets, timers and files on
//!   tokio: one UDP control socket, the tick timer, persistence on a
//!   blocking thread, and the TCP discovery listener. [`run`] starts it.
#![forbid(unsafe_code)]

pub mod cluster_file;
pub mod core;
pub mod discovery;
pub mod driver;
pub mod group;
pub mod join;
pub mod registry;

pub use driver::{run, LbConfig, LbError};
