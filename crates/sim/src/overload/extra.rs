//! Two smaller virtual-time experiments behind the other targets, on the same cores:
//!
//! - [`hedging`]: a backend with a slow tail (1% of attempts take 200 ms, the rest 4–6 ms),
//!   1,000 requests per second for 60 s. Unhedged vs hedged after the tracked p95
//!   ([`LatencyTracker`]) with a 10% [`RetryBudget`] (no reserve). Reports p99.9 both ways and
//!   the extra load.
//! - [`priority`]: one server of 50 workers × 50 ms (1,000 rps) offered **3,000 rps** by 10
//!   clients, 10% critical, 30% normal, 60% sheddable. Each client sheds by priority
//!   ([`PriorityShedder`]) under its Vegas limit ([`AdaptiveLimit`]), with shares sized to the
//!   mix: at 3× overload critical traffic alone is 30% of capacity, so normal and sheddable
//!   may fill only 50% and 30% of the limit. Reports the success rate per priority.

use std::collections::VecDeque;

use colony_base::SplitMix64;
use serde::Serialize;

use crate::queue::EventQueue;

use colony_client::policy::budget::{BudgetConfig, RetryBudget};
use colony_client::policy::limit::{AdaptiveLimit, LimitAlgorithm, LimitConfig, Sample};
use colony_client::policy::quantile::LatencyTracker;
use colony_client::policy::shed::{Priority, PriorityShedder, ShedConfig};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// The outcome of [`hedging`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HedgeReport {
    /// p99.9 latency without hedging.
    pub p999_unhedged_ms: f64,
    /// p99.9 latency with hedging.
    pub p999_hedged_ms: f64,
    /// `p999_unhedged_ms / p999_hedged_ms`.
    pub p999_cut: f64,
    /// Extra attempts ÷ requests.
    pub extra_load: f64,
}

fn attempt_latency_ns(rng: &mut SplitMix64) -> u64 {
    if rng.below(100) == 0 {
        200 * MS
    } else {
        4 * MS + rng.below(2 * MS)
    }
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}

/// Runs the hedging experiment (see the module doc); deterministic by seed.
pub fn hedging(seed: u64) -> HedgeReport {
    let mut rng = SplitMix64::new(seed);
    let budget = RetryBudget::new(BudgetConfig {
        ratio: 0.1,
        retries_min_per_s: 0.0,
        window_ns: 10 * S,
    });
    let tracker = LatencyTracker::new(10 * S, 10 * MS);
    let requests = 60_000u64;
    let (mut unhedged, mut hedged) = (Vec::new(), Vec::new());
    let mut extra = 0u64;
    for i in 0..requests {
        let now = i * MS;
        budget.deposit(now);
        let first = attempt_latency_ns(&mut rng);
        unhedged.push(first);
        let delay = tracker.quantile_ns_cached(now, 0.95, 100);
        let latency = match delay {
            Some(delay) if first > delay && budget.try_withdraw(now + delay) => {
                extra += 1;
                let second = attempt_latency_ns(&mut rng);
                first.min(delay + second)
            }
            _ => first,
        };
        tracker.record(now, latency);
        hedged.push(latency);
    }
    unhedged.sort_unstable();
    hedged.sort_unstable();
    let p999_unhedged_ms = quantile(&unhedged, 0.999);
    let p999_hedged_ms = quantile(&hedged, 0.999);
    HedgeReport {
        p999_unhedged_ms,
        p999_hedged_ms,
        p999_cut: p999_unhedged_ms / p999_hedged_ms,
        extra_load: extra as f64 / requests as f64,
    }
}

/// The outcome of [`priority`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriorityReport {
    /// Offered load ÷ capacity.
    pub overload: f64,
    /// Successes ÷ offered, for sheddable, normal and critical requests.
    pub success_by_priority: [f64; 3],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival { client: usize },
    Done { id: u64 },
}

struct Call {
    client: usize,
    priority: Priority,
    start_ns: u64,
    inflight: u32,
}

/// Runs the priority-shedding experiment (see the module doc); deterministic by seed.
pub fn priority(seed: u64) -> PriorityReport {
    const CLIENTS: usize = 10;
    const WORKERS: usize = 50;
    const SERVICE_NS: u64 = 50 * MS;
    const OFFERED_RPS: f64 = 3_000.0;
    let mut rng = SplitMix64::new(seed);
    let mut events = EventQueue::new();
    let shedders: Vec<PriorityShedder> = (0..CLIENTS)
        .map(|_| {
            PriorityShedder::new(ShedConfig {
                shares: [0.3, 0.5, 1.0],
            })
        })
        .collect();
    let mut limits: Vec<AdaptiveLimit> = (0..CLIENTS)
        .map(|_| AdaptiveLimit::new(LimitConfig::new(LimitAlgorithm::vegas())))
        .collect();
    let mut calls: std::collections::HashMap<u64, Call> = std::collections::HashMap::new();
    let mut queue: VecDeque<u64> = VecDeque::new();
    let mut busy = 0usize;
    let mut offered = [0u64; 3];
    let mut succeeded = [0u64; 3];
    let mut next_id = 0u64;
    let exponential = |rng: &mut SplitMix64| {
        let uniform = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        (-uniform.ln() / (OFFERED_RPS / CLIENTS as f64) * 1e9) as u64
    };
    for client in 0..CLIENTS {
        let at = exponential(&mut rng);
        events.schedule(at, Ev::Arrival { client });
    }
    let duration = 30 * S;
    while let Some((now, event)) = events.pop_until(duration - 1) {
        match event {
            Ev::Arrival { client } => {
                let at = now + exponential(&mut rng).max(1);
                events.schedule(at, Ev::Arrival { client });
                let priority = match rng.below(10) {
                    0 => Priority::Critical,
                    1..=3 => Priority::Normal,
                    _ => Priority::Sheddable,
                };
                let measured = now >= 5 * S;
                if measured {
                    offered[priority as usize] += 1;
                }
                let limit = limits[client].limit();
                if !shedders[client].try_acquire(priority, limit) {
                    continue;
                }
                next_id += 1;
                let inflight = shedders[client].inflight();
                calls.insert(
                    next_id,
                    Call {
                        client,
                        priority,
                        start_ns: now,
                        inflight,
                    },
                );
                if busy < WORKERS {
                    busy += 1;
                    events.schedule(now + SERVICE_NS, Ev::Done { id: next_id });
                } else {
                    queue.push_back(next_id);
                }
            }
            Ev::Done { id } => {
                let call = calls.remove(&id).expect("a call in service");
                shedders[call.client].release();
                let rtt_ns = now - call.start_ns;
                let is_dropped = rtt_ns > S;
                limits[call.client].handle_sample(Sample {
                    now_ns: now,
                    rtt_ns,
                    inflight: call.inflight,
                    is_dropped,
                });
                if !is_dropped && call.start_ns >= 5 * S {
                    succeeded[call.priority as usize] += 1;
                }
                match queue.pop_front() {
                    Some(next) => events.schedule(now + SERVICE_NS, Ev::Done { id: next }),
                    None => busy -= 1,
                }
            }
        }
    }
    let rate = |p: usize| succeeded[p] as f64 / offered[p].max(1) as f64;
    PriorityReport {
        overload: OFFERED_RPS / (WORKERS as f64 * S as f64 / SERVICE_NS as f64),
        success_by_priority: [rate(0), rate(1), rate(2)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedging_cuts_p999_five_fold_for_under_five_percent_load() {
        let report = hedging(1);
        println!("{report:?}");
        assert!(report.p999_cut >= 5.0, "{report:?}");
        assert!(report.extra_load <= 0.05, "{report:?}");
        assert!(report.extra_load > 0.0, "{report:?}");
    }

    #[test]
    fn priority_critical_survives_triple_overload() {
        let report = priority(1);
        println!("{report:?}");
        assert!((report.overload - 3.0).abs() < 1e-9);
        let [sheddable, _normal, critical] = report.success_by_priority;
        assert!(critical >= 0.99, "{report:?}");
        assert!(
            sheddable < critical,
            "sheddable traffic is shed first: {report:?}"
        );
    }
}
