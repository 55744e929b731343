//! The `store` command's cluster tools, shared by the binary and the
//! end-to-end tests.
//!
//! - [`up`]: `store up`, a whole local cluster (one LB, N servers) from one
//!   command, with its data under one directory.
//! - [`status`]: `store status`, the cluster as the LB sees it.
//! - [`nemesis`]: fault tests with real processes (kills, pauses, restarts,
//!   UDP cuts through userspace relays), checked for linearizability; used
//!   by `tests/nemesis.rs` and the `nemesis` binary.
//! - [`netns`]: hosts in Linux network namespaces joined by veth links that
//!   can be taken down, for the tests and the nemesis that cut TCP too.
//!
//! The server itself is the `server` crate, the LB the `lb` crate; this only
//! starts processes and reads the LB's `stats`.
#![forbid(unsafe_code)]

pub mod nemesis;
pub mod netns;
pub mod status;
pub mod up;
