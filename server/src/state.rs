//! The state machine as the server shares it: one lock over
//! [`data::state::State`], read by every connection and written by the one
//! thread that applies committed entries (the commit thread or the
//! replication driver).

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use data::state::State;

/// The state shared by the connections (reads) and the commit thread or
/// replication driver (writes). A read-write lock: gets on every connection
/// proceed together and wait only while a batch of entries is applied.
pub type SharedState = Arc<RwLock<State>>;

/// Locks the state for reading. A panic while holding the lock for writing
/// leaves the state possibly half-applied, which no later reader may see:
/// poisoning is fatal.
pub fn read(state: &SharedState) -> RwLockReadGuard<'_, State> {
    state
        .read()
        .expect("state lock poisoned by a panic in apply")
}

/// Locks the state for applying entries (see [`read`] on poisoning).
pub fn write(state: &SharedState) -> RwLockWriteGuard<'_, State> {
    state
        .write()
        .expect("state lock poisoned by a panic in apply")
}
