//! Colony's membership core: SWIM failure detection (randomized round-robin probes, indirect
//! probes, suspicion with incarnations and refutation), infection-style dissemination
//! piggybacked on probes, digest-based push-pull anti-entropy over streams, graceful leave,
//! versioned metadata, user events, and Lifeguard (local health awareness, nacks, dynamic
//! suspicion timeouts, buddy system).
//!
//! Sans-IO: no sockets, clocks, threads or global randomness. Time (µs) and a seed come in;
//! datagrams, stream frames, timers and notifications come out as [`Output`]s. The runtime
//! binds it to UDP/TCP and tokio; the simulator to virtual time and a packet model. The
//! design is written up in `docs/protocols/swim.md`.
#![deny(missing_docs, unreachable_pub)]

pub mod addr;
pub mod broadcast;
pub mod config;
pub mod index;
pub mod member;
mod swim;
pub mod wire;

pub use addr::Addr;
pub use config::{Config, MILLI, SECOND};
pub use member::{Member, State};
pub use swim::{Notification, Output, SelfState, Stats, Swim, Timer, UserEvent};
pub use wire::{DecodeError, Meta, Name, Update};

#[cfg(test)]
mod tests;
