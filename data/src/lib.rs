//! Pure code for everything that crosses a boundary, with no I/O and no clock.
//!
//! Layout:
//! - [`limits`]: every protocol limit as a named constant.
//! - [`c_number`]: memcached's reading of a decimal number (incr/decr).
//! - [`exptime`]: memcached's relative/absolute/negative expiry rules, resolved
//!   against a time the caller passes in.
//! - [`protocol`]: the memcached text protocol. Server side: bytes to
//!   [`protocol::Request`], replies to bytes. Client side: requests to bytes,
//!   bytes to [`protocol::client::Response`].
//! - [`command`]: the state machine's input, as written in the log, and its
//!   versioned binary encoding.
//! - [`state`]: the key-value state machine, `apply(index, command) -> Outcome`.
//! - [`items`]: where the state keeps its items (packed segments and a table
//!   of locations).
//! - [`record`]: log segment header and record format.
//! - [`keystore`]: the snapshot (keystore file) format.
//! - [`admin_proof`]: proof of the cluster secret for commands that change
//!   the cluster.
//! - [`frame`]: the cluster's UDP datagrams; [`wire`]: the byte reader and
//!   address encoding it shares with the LB's registry file.
//!
//! Servers, clients and tests call into this crate; it never touches a socket,
//! a file or the clock, so that the same code runs in the binaries and under
//! a simulator.
#![forbid(unsafe_code)]

pub mod admin_proof;
pub mod c_number;
pub mod cluster_file;
pub mod command;
pub mod exptime;
pub mod frame;
pub mod items;
pub mod keystore;
pub mod limits;
pub mod protocol;
pub mod record;
pub mod state;
pub mod wire;
