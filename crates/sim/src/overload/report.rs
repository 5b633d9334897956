//! What a run measures and how the report is computed.

use serde::Serialize;

use super::engine::Params;
use super::{ClientKind, Scenario};

const S: u64 = 1_000_000_000;

/// The outcome of one run; see the module doc of [`super`] for each field's definition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OverloadReport {
    /// The scenario.
    pub scenario: Scenario,
    /// The clients.
    pub clients: ClientKind,
    /// The seed every random choice was drawn from.
    pub seed: u64,
    /// The hash of every event handled, in order: the same seed gives the same hash.
    pub trace_hash: u64,
    /// How many clients.
    pub clients_count: usize,
    /// The capacity the goodput ratio is measured against.
    pub capacity_rps: f64,
    /// Goodput ÷ capacity over the overload window.
    pub goodput_ratio_during_overload: f64,
    /// Attempts (sent to a server, or answered by the cache) ÷ logical requests.
    pub retry_amplification: f64,
    /// 99th percentile latency of successful logical requests, whole run.
    pub p99_latency_ms: f64,
    /// 99.9th percentile latency of successful logical requests, whole run.
    pub p999_latency_ms: f64,
    /// Seconds from the heal to sustained goodput (≥ 90% of offered for 3 s); `None` if never.
    pub recovery_s: Option<f64>,
    /// Answers served by a fallback (a stale cached value), counted in goodput.
    pub fallback_answers: u64,
    /// Successful logical requests per second, second by second.
    pub goodput_per_s: Vec<u64>,
    /// Logical requests offered per second.
    pub offered_per_s: Vec<u64>,
    /// Attempts per second.
    pub attempts_per_s: Vec<u64>,
    /// Backends passing their health checks at the end of each second (health cascade).
    pub passing_per_s: Vec<usize>,
}

/// Counters filled while the world runs.
#[derive(Debug)]
pub(super) struct Metrics {
    goodput: Vec<u64>,
    offered: Vec<u64>,
    attempts: Vec<u64>,
    passing: Vec<Option<usize>>,
    latencies_ns: Vec<u64>,
    fallbacks: u64,
}

fn second(now_ns: u64) -> usize {
    (now_ns / S) as usize
}

impl Metrics {
    pub(super) fn new(duration_ns: u64) -> Self {
        let seconds = duration_ns.div_ceil(S) as usize;
        Self {
            goodput: vec![0; seconds],
            offered: vec![0; seconds],
            attempts: vec![0; seconds],
            passing: vec![None; seconds],
            latencies_ns: Vec::new(),
            fallbacks: 0,
        }
    }

    pub(super) fn offered(&mut self, now_ns: u64) {
        self.offered[second(now_ns)] += 1;
    }

    pub(super) fn attempt(&mut self, now_ns: u64) {
        self.attempts[second(now_ns)] += 1;
    }

    pub(super) fn success(&mut self, now_ns: u64, latency_ns: u64) {
        self.goodput[second(now_ns)] += 1;
        self.latencies_ns.push(latency_ns);
    }

    pub(super) fn fallback(&mut self) {
        self.fallbacks += 1;
    }

    pub(super) fn passing(&mut self, now_ns: u64, passing: usize) {
        self.passing[second(now_ns)] = Some(passing);
    }

    pub(super) fn report(
        mut self,
        scenario: Scenario,
        kind: ClientKind,
        params: &Params,
        seed: u64,
        trace_hash: u64,
    ) -> OverloadReport {
        let (from, to) = (second(params.overload_ns.0), second(params.overload_ns.1));
        let good: u64 = self.goodput[from..to].iter().sum();
        let goodput_ratio = good as f64 / (params.capacity_rps * (to - from) as f64);
        let offered: u64 = self.offered.iter().sum();
        let attempts: u64 = self.attempts.iter().sum();
        self.latencies_ns.sort_unstable();
        let quantile_ms = |q: f64| {
            if self.latencies_ns.is_empty() {
                return 0.0;
            }
            let rank = ((q * self.latencies_ns.len() as f64).ceil() as usize)
                .clamp(1, self.latencies_ns.len());
            self.latencies_ns[rank - 1] as f64 / 1e6
        };
        let heal = second(params.heal_ns);
        let is_good = |s: usize| self.goodput[s] as f64 >= 0.9 * self.offered[s] as f64;
        let recovery_s = (heal..self.goodput.len().saturating_sub(2))
            .find(|s| is_good(*s) && is_good(s + 1) && is_good(s + 2))
            .map(|s| (s + 1 - heal) as f64);
        let mut last = params.backends_count();
        let passing_per_s = self
            .passing
            .iter()
            .map(|p| {
                last = p.unwrap_or(last);
                last
            })
            .collect();
        OverloadReport {
            scenario,
            clients: kind,
            seed,
            trace_hash,
            clients_count: params.clients,
            capacity_rps: params.capacity_rps,
            goodput_ratio_during_overload: goodput_ratio,
            retry_amplification: attempts as f64 / offered.max(1) as f64,
            p99_latency_ms: quantile_ms(0.99),
            p999_latency_ms: quantile_ms(0.999),
            recovery_s,
            fallback_answers: self.fallbacks,
            goodput_per_s: self.goodput,
            offered_per_s: self.offered,
            attempts_per_s: self.attempts,
            passing_per_s,
        }
    }
}
