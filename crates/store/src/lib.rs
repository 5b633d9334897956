//! Colony's replicated state machine: KV with revisions and locks, sessions, and the service
//! catalog (nodes, services, health checks).
//!
//! What it is: a deterministic function from (state, log entry) to (new state, outcome,
//! changes). Every mutation reaches it as an [`Entry`] that was first made durable in a log; the
//! same sequence of entries always produces the same state, byte for byte. Time enters only as
//! the `time_ms` the proposer stamped on the entry.
//!
//! What it is not: it does no IO, keeps no timers and reads no clock. Session TTLs are tracked by
//! [`SessionTtlTracker`], a separate pure core driven by the runtime, whose expiries come back
//! here as ordinary `SessionDestroy` entries.
//!
//! Driving it:
//! 1. Encode a [`Command`] into an [`Entry`] (with the proposer's wall-clock time).
//! 2. Append it to the durable log and sync.
//! 3. Call [`StateMachine::apply`] with the next index; send the [`Outcome`] to the caller.
//! 4. Wake every watcher of the returned [`Change`]s.
#![deny(missing_docs, unreachable_pub)]

mod command;
mod key;
mod kv_txn;
mod mvcc;
mod session_ttl;
mod state;
mod txn;
mod types;

pub use command::{
    CatalogRegistration, Command, DecodeError, ENTRY_FORMAT_VERSION, Entry, KvSetMode, Outcome,
    Rejection, RejectionKind, TxnError, TxnOp, TxnOutcome, TxnResult,
};
pub use key::Key;
pub use kv_txn::{
    Compare, CompareOp, CompareTarget, DeleteOp, KvOp, KvOpResult, KvTxn, KvTxnResult, PutOp,
    RangeError, RangeQuery, RangeResult, SortOrder, SortTarget, reject,
};
pub use mvcc::{
    Compacted, HISTORY_BYTES_MAX, HISTORY_EVENTS_MAX, KeyRange, KvEvent, KvHistory, prefix_end,
};
pub use session_ttl::SessionTtlTracker;
pub use state::{Change, SNAPSHOT_FORMAT_VERSION, SnapshotError, StateMachine, Table, encode_into};
pub use types::{
    Check, CheckDefinition, HealthStatus, KvEntry, Node, Service, Session, SessionBehavior, Weights,
};

/// The largest KV value accepted, in bytes (Consul's `kv_max_value_size` default: 512 KiB).
pub const KV_VALUE_BYTES_MAX: usize = 512 * 1024;
/// The longest key accepted, in bytes.
pub const KV_KEY_BYTES_MAX: usize = 2048;
/// The most operations one transaction may hold (Consul's limit).
pub const TXN_OPS_MAX: usize = 64;
/// The name of the node-level check that says a node is alive (as Consul's `serfHealth`).
pub const NODE_HEALTH_CHECK_ID: &str = "serfHealth";

#[cfg(test)]
mod mvcc_tests;
#[cfg(test)]
mod state_tests;
