//! Colony's production runtime: binds the sans-IO cores to the real world.
//!
//! What it is: the durable log on disk ([`log_store`]: preallocated segments of
//! checksummed records, one fdatasync per batch, snapshots), the writer
//! thread that batches, persists, applies and answers ([`writer`]), the watch hub that wakes
//! blocking queries ([`watch_hub`]), check runners (HTTP, TCP, TTL) and session TTL timers, all
//! owned by one [`Agent`].
//!
//! What it is not: it speaks no client protocol; `colony-api` maps Consul's HTTP API onto the
//! [`Agent`] handle.
//!
//! Driving it:
//! 1. [`Agent::start`] with an [`AgentConfig`]: opens and replays the data dir, registers the
//!    node, starts checks and session timers.
//! 2. Write with [`Agent::propose`]; the answer arrives once the entry is on disk and applied.
//! 3. Read with [`Agent::read`]; wait for changes with [`Agent::subscribe`].
//! 4. A replicated server ([`AgentConfig::cluster`]) runs Raft ([`raft_node`], persisted by
//!    [`raft_storage`], messages over [`rpc`]); [`cluster`] forwards writes and read
//!    barriers to the leader and follows membership to form and maintain the cluster.
//! 5. [`Agent::shutdown`] on SIGINT/SIGTERM; [`Agent::fatal_error`] resolves if storage fails.
#![deny(missing_docs, unreachable_pub)]

mod agent;
mod background;
mod checks;
pub mod client_agent;
pub mod cluster;
mod disk_watch;
pub mod gossip;
pub mod keyring;
pub mod log_store;
pub mod member_catalog;
pub mod metrics;
pub mod raft_node;
pub mod raft_storage;
mod read_batch;
mod read_gate;
pub mod rpc;
mod snapshot_schedule;
pub mod watch_hub;
pub mod writer;

pub use agent::{
    Agent, AgentConfig, AgentError, HttpForwarder, StartError, mono_ms, outcome_to_result, wall_ms,
};
pub use checks::{CHECK_OUTPUT_BYTES_MAX, CHECK_TIMEOUT_MS_DEFAULT};
pub use cluster::{ClusterConfig, ReadBasis, ReadConsistency};
pub use raft_node::{ClusterError, RaftStatus};
pub use watch_hub::Topic;
pub use writer::{Applied, WriteError};
