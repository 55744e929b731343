//! Async client library for any server that speaks memcached's text
//! protocol (store, memcached), and the load generator behind `client bench`.
//!
//! Layout, following the data path:
//! - `data::protocol::client` (in the `data` crate): requests to bytes, bytes
//!   to replies; pure.
//! - [`connection`]: [`Connection`], the only owner of a socket: buffers,
//!   flush, read, and the in-order queue of replies owed.
//! - [`client`]: [`Client`], one typed method per command with a timeout, and
//!   [`Pipeline`] for batches.
//! - [`bench`]: the load generator, driving many [`Connection`]s.
//! - [`bench_peers`]: Redis (RESP SET + WAIT) and etcd (v3 HTTP gateway put)
//!   connections for `client bench --protocol`, to compare durable writes.
//! - [`error`]: [`Error`], the one error type.
//!
//! It never prints except `bench`'s optional progress line, and never reads
//! the environment; the `client` binary (`src/bin/client.rs` in the root
//! package) owns argument parsing and output.
#![forbid(unsafe_code)]

pub mod bench;
pub mod bench_peers;
pub mod client;
pub mod connection;
pub mod discovery;
pub mod error;

pub use client::{Client, Options, Pipeline, StoreResult, TIMEOUT_DEFAULT_MS};
pub use connection::Connection;
pub use data::command::StoreMode;
pub use data::protocol::client::{Response, Status, Value};
pub use error::{Error, Result};
