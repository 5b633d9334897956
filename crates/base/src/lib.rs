//! Shared vocabulary of colony: time as plain milliseconds, a hybrid logical clock, the
//! evidence every answer carries, Go-style durations, and a small seeded PRNG.
//!
//! This crate is deliberately not a runtime: it reads no clock, opens no socket and owns no
//! thread. Cores receive time and randomness from their caller; this crate only gives those
//! inputs names and types.
#![deny(missing_docs, unreachable_pub)]

pub mod duration;
pub mod evidence;
pub mod health_status;
pub mod hlc;
pub mod rng;

pub use duration::{DurationParseError, format_go_duration, parse_go_duration_ms};
pub use evidence::{Evidence, Freshness, Lifetime};
pub use health_status::HealthStatus;
pub use hlc::{Hlc, HlcTimestamp};
pub use rng::SplitMix64;

/// Milliseconds since the Unix epoch, as read by a runtime (or a simulator) and passed into cores.
pub type UnixMs = u64;
