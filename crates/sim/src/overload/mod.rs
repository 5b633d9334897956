//! Overload scenarios: the simulator's second world. On the same [`crate::queue::EventQueue`]
//! (virtual time, one seed drives every choice, a trace hash proves the replay) it
//! reproduces three classic cascades, first with naive clients and then with clients built
//! from `colony-client`'s policy cores — the same `Breaker`, `ConcurrencyLimiter`,
//! `RetryBudget`, `Backoff`, `Balancer` and `KeyedGcra` its tower layers wrap.
//!
//! The servers are FIFO queues in front of a fixed number of workers. They never learn that a
//! client gave up, so a request that waits past its client's timeout is wasted work: that is
//! what turns overload into collapse.
//!
//! Both kinds of client send each attempt with a 1 s timeout. A **naive** client retries a
//! timed-out or failed attempt at once, up to 3 times, and sends to every backend discovery
//! lists as passing (round robin). A **resilient** client:
//! - caps its calls in flight with a Vegas adaptive limit and fails fast over it,
//! - draws retries from a 10% budget, with decorrelated jitter (10 ms base, 1 s cap),
//!   within a 1 s deadline per logical request,
//! - runs a breaker (count window of 100, 50% failures, 2 s open, 5 probes),
//! - balances with power of two choices over peak-EWMA and treats a failed health check as
//!   an ejection capped at half of the backends (never removes them all),
//! - (herd) refreshes an expired key at most once per 200 ms (keyed GCRA, a per-client
//!   single flight) and answers every refused or failed read with the stale value (the
//!   fallback hook; such answers are counted in `fallback_answers`). A naive client treats an
//!   expired key as a miss and reads the database.
//!
//! # Scenarios (fixed parameters, so runs compare)
//!
//! Every run lasts 60 s of virtual time with 10 clients issuing a Poisson stream of
//! logical requests; goodput is successful logical requests answered within their timeout.
//!
//! - [`Scenario::RetryStorm`]: one dependency, 50 workers × 50 ms = **1,000 rps**. Load
//!   1,000 rps. From 10 s to 40 s the dependency is throttled to 25 workers (**500 rps**):
//!   2× overload. It heals at 40 s.
//! - [`Scenario::HealthCascade`]: 10 backends of 5 workers × 50 ms = **1,000 rps** in all. Load
//!   500 rps, spiking to **2,000 rps** (2×) from 10 s to 40 s. Each backend answers a health
//!   check every second through its own queue; 3 checks without an answer within 500 ms mark
//!   it critical (removed from `?passing`), 2 answered checks mark it passing again. The
//!   spike ends (the dependency "heals") at 40 s.
//! - [`Scenario::ThunderingHerd`]: a look-aside cache of 2,000 keys in front of a database of
//!   5 workers × 20 ms = **250 rps**. Load 5,000 rps, uniform over the keys; a hit answers
//!   in 1 ms, a miss reads the database and refreshes the key when the answer arrives in time.
//!   Every key expires at 10 s (they were all loaded together), so every read misses at once:
//!   20× the database's capacity. There is nothing to heal, so recovery counts from the
//!   expiry. "Capacity" is the 5,000 rps the warm cache serves; the overload window is
//!   10 s–20 s.
//!
//! Two smaller experiments cover the hedging and priority targets: [`hedging`] and
//! [`priority`] (parameters in their docs).
//!
//! # Output
//!
//! [`OverloadReport`]: goodput per second, `goodput_ratio_during_overload` (goodput ÷ capacity
//! over the overload window), `retry_amplification` (attempts ÷ logical requests over the
//! run), `p99_latency_ms` of successful requests, and `recovery_s`: from the heal until the
//! first of three consecutive seconds with goodput ≥ 90% of the offered load (`None` if that
//! never happens within the run).

mod engine;
mod extra;
mod report;

pub use extra::{HedgeReport, PriorityReport, hedging, priority};
pub use report::OverloadReport;

use serde::Serialize;

/// Which cascade to reproduce; parameters are in the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Retries on a throttled dependency.
    RetryStorm,
    /// Load spike → slow backends → failed health checks → removal → collapse.
    HealthCascade,
    /// A cache flush sends every request to the database at once.
    ThunderingHerd,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 3] = [
        Scenario::RetryStorm,
        Scenario::HealthCascade,
        Scenario::ThunderingHerd,
    ];

    /// The scenario's name in reports and on the command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            Scenario::RetryStorm => "retry-storm",
            Scenario::HealthCascade => "health-cascade",
            Scenario::ThunderingHerd => "thundering-herd",
        }
    }
}

/// Which clients to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// Timeouts and immediate retries (3), round robin over passing backends.
    Naive,
    /// The suite's policies; see the module doc.
    Resilient,
}

impl ClientKind {
    /// The kind's name in reports and on the command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            ClientKind::Naive => "naive",
            ClientKind::Resilient => "resilient",
        }
    }
}

/// Runs `scenario` with `clients`; the same seed gives the same report.
pub fn run(scenario: Scenario, clients: ClientKind, seed: u64) -> OverloadReport {
    engine::World::new(scenario, clients, seed).run()
}

#[cfg(test)]
mod tests;
