//! Colony's deterministic simulator. It runs the real membership core (`colony-swim`) of
//! every node on one thread, on virtual time, over a virtual network with latency, loss,
//! duplication, reordering and partitions, and with crashed, restarted and paused nodes.
//! One seed drives every random choice, so a run replays bit for bit; the trace hash proves it.
#![deny(missing_docs, unreachable_pub)]

pub mod foca_baseline;
pub mod net;
pub mod overload;
pub mod queue;
pub mod scenario;
pub mod world;

pub use net::{Latency, NetModel, Partition};
pub use queue::EventQueue;
pub use scenario::{
    MembershipResult, MembershipScenario, SpreadFigures, percentile, run_membership,
};
pub use world::{DutyCycle, Note, World};
