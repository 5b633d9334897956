//! Colony's consensus core: Raft in the shape of etcd-raft — leader election with randomized
//! timeouts, pre-vote and check-quorum (leader stickiness), log replication with batching,
//! pipelining and fast backtracking, log compaction and snapshot install, leadership transfer,
//! ReadIndex, and single-voter membership changes.
//!
//! What it deliberately is not: it does no IO, reads no clock, owns no thread and draws no
//! global randomness. Time comes in as `now_ms`, randomness from a seed, and everything the
//! node must do comes out through [`Ready`]. It cannot fail except by panicking on a broken
//! invariant (a bug) or a misuse of the contract below. Design and what is not done yet:
//! `docs/protocols/raft.md`.
//!
//! # Driving it
//! 1. Build each node with [`Raft::new`] from what it persisted ([`Restored`], default for a
//!    fresh node) and a seed for its election jitter.
//! 2. Feed inputs: [`Raft::handle_tick`] whenever time passes (at least by
//!    [`Raft::next_deadline_ms`]), [`Raft::handle_message`] for each message received,
//!    and the user calls [`Raft::propose`], [`Raft::propose_conf_change`],
//!    [`Raft::read_index`], [`Raft::transfer_leadership`] and [`Raft::compact`].
//! 3. When [`Raft::has_ready`], take [`Raft::ready`] and handle it **in this order**
//!    (`leader_messages` — appends, heartbeats, snapshots sent as leader — may go out at
//!    once, in parallel with step 1 (thesis §10.2.1), or later with `messages`):
//!    1. persist `snapshot` (replacing the persisted log), then `entries` (overwriting any
//!       persisted entries from `entries[0].index` on), then `hard_state`, and fsync;
//!    2. only then send `messages` — a vote or an append acknowledgement is a promise that
//!       what it acknowledges survives a crash (Raft Figure 2: "respond to RPCs only after
//!       updating stable storage");
//!    3. restore the state machine from `snapshot` if any, then apply `committed_entries`;
//!    4. serve `read_states` once applied up to their index;
//!    5. call [`Raft::advance`]. Only then does a leader count its own entries towards the
//!       commit quorum, and only then is a follower's applied index moved.
//! 4. Repeat. Inputs may keep coming between `ready` and `advance` (while the fsync runs);
//!    only the next `ready` must wait for `advance`. Messages may be lost, duplicated, delayed
//!    and reordered; the core copes.
//!
//! A crash loses whatever was not persisted through step 3.1; [`Raft::new`] rebuilds the node
//! from the rest. [`Raft::check_invariants`] may be called after any input (tests do it after
//! every one).
#![deny(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod config;
mod log;
mod message;
mod progress;
mod raft;

pub use config::{Config, ConfigError};
pub use message::{
    ConfChange, Entry, EntryKind, Envelope, HardState, Message, ReadState, Rejection, Restored,
    Snapshot, SnapshotMeta,
};
pub use raft::{
    PeerState, PeerStatus, ProposeError, READ_REQUESTS_MAX, Raft, Ready, RequestError, Role, Status,
};
