//! Load-aware balancing core: power of two choices (Mitzenmacher) over a peak-EWMA latency
//! estimate (Finagle's and linkerd's `PeakEwma`: jumps up to a slower sample at once, decays
//! toward faster ones with time constant `decay_ns`, times the calls in flight + 1), outlier
//! ejection (Envoy's consecutive errors and success-rate rules, with ejection time growing with
//! each ejection and at most `ejection_share_max` of endpoints ejected), and zone affinity
//! (stay in the local zone while enough of it is healthy).
//!
//! `&mut self`, single-threaded: the tower layer keeps it behind a mutex taken once per pick
//! and once per completion. Time and randomness are inputs. Endpoints are indices; the caller
//! maps them to services. [`Balancer::handle_peer_ejection`] takes cluster evidence (a peer
//! ejected this endpoint, by gossip) through the same ejection path.

use colony_base::SplitMix64;

/// Balancer parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceConfig {
    /// Peak-EWMA time constant.
    pub decay_ns: u64,
    /// Latency assumed for an endpoint with no sample yet.
    pub rtt_initial_ns: u64,
    /// Eject after this many consecutive errors.
    pub consecutive_errors_eject: u32,
    /// Success-rate ejection: endpoints below `mean − stdev_factor × stdev` are ejected.
    pub success_rate_stdev_factor: f64,
    /// Success-rate ejection needs this many calls per endpoint in the interval…
    pub success_rate_calls_min: u32,
    /// …and this many endpoints with that many calls.
    pub success_rate_endpoints_min: usize,
    /// First ejection lasts this long; the n-th lasts n times as long.
    pub ejection_base_ns: u64,
    /// Ejections never exceed this share of the endpoints.
    pub ejection_share_max: f64,
    /// This client's zone; `None` disables zone affinity.
    pub zone_local: Option<String>,
    /// Stay in the local zone while at least this share of its endpoints is available.
    pub zone_healthy_share_min: f64,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            decay_ns: 10_000_000_000,
            rtt_initial_ns: 30_000_000,
            consecutive_errors_eject: 5,
            success_rate_stdev_factor: 1.9,
            success_rate_calls_min: 100,
            success_rate_endpoints_min: 5,
            ejection_base_ns: 30_000_000_000,
            ejection_share_max: 0.5,
            zone_local: None,
            zone_healthy_share_min: 0.7,
        }
    }
}

/// One endpoint's state.
#[derive(Debug, Clone)]
struct Endpoint {
    zone: Option<String>,
    rtt_ewma_ns: f64,
    rtt_stamp_ns: u64,
    pending: u32,
    errors_consecutive: u32,
    interval_calls: u32,
    interval_successes: u32,
    ejected_until_ns: Option<u64>,
    ejections: u32,
}

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EjectionReason {
    /// Too many errors in a row.
    ConsecutiveErrors,
    /// Success rate far below its peers'.
    SuccessRate,
    /// A peer reported it (cluster evidence).
    Peer,
}

/// An endpoint ejected, for the caller to log and export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// The endpoint's index.
    pub endpoint: usize,
    /// Why.
    pub reason: EjectionReason,
    /// Until when.
    pub until_ns: u64,
}

/// The balancer; see the module doc.
#[derive(Debug, Clone)]
pub struct Balancer {
    config: BalanceConfig,
    endpoints: Vec<Endpoint>,
    /// Scratch list of candidate indices, kept to avoid allocating per pick.
    candidates: Vec<usize>,
    /// No endpoint is ejected at or after this time (lets a pick skip the candidate scan).
    ejections_end_ns: u64,
    /// `1 / decay_ns`, so the hot path multiplies instead of dividing.
    decay_per_ns: f64,
}

/// `e^(−x)` for `x ≥ 0`, approximated as `1 / (1 + x + x²/2 + x³/6)`: positive, monotone,
/// within 2% of the exact value for `x ≤ 1` and never above 1 — all a decay weight needs,
/// at a fraction of `f64::exp`'s cost on the pick path.
fn decay(x: f64) -> f64 {
    debug_assert!(x >= 0.0);
    // Calls usually come far closer together than the time constant: skip the division.
    if x < 1e-4 {
        return 1.0 - x;
    }
    1.0 / (1.0 + x * (1.0 + x * (0.5 + x * (1.0 / 6.0))))
}

/// Endpoints kept at most.
pub const ENDPOINTS_MAX: usize = 10_000;

impl Balancer {
    /// A balancer with no endpoints.
    pub fn new(config: BalanceConfig) -> Self {
        assert!(config.decay_ns > 0, "decay_ns must be positive");
        let config_decay_ns = config.decay_ns as f64;
        assert!((0.0..=1.0).contains(&config.ejection_share_max));
        Self {
            config,
            endpoints: Vec::new(),
            candidates: Vec::new(),
            ejections_end_ns: 0,
            decay_per_ns: 1.0 / config_decay_ns,
        }
    }

    /// Adds an endpoint in `zone`; returns its index.
    ///
    /// # Panics
    /// Panics beyond [`ENDPOINTS_MAX`] endpoints.
    pub fn add(&mut self, zone: Option<String>) -> usize {
        assert!(self.endpoints.len() < ENDPOINTS_MAX, "too many endpoints");
        self.endpoints.push(Endpoint {
            zone,
            rtt_ewma_ns: self.config.rtt_initial_ns as f64,
            rtt_stamp_ns: 0,
            pending: 0,
            errors_consecutive: 0,
            interval_calls: 0,
            interval_successes: 0,
            ejected_until_ns: None,
            ejections: 0,
        });
        self.endpoints.len() - 1
    }

    /// Removes endpoint `index`; the last endpoint takes its index (as `Vec::swap_remove`).
    pub fn remove(&mut self, index: usize) {
        self.endpoints.swap_remove(index);
    }

    /// Endpoints known.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Whether `index` is ejected at `now_ns`.
    pub fn is_ejected(&self, index: usize, now_ns: u64) -> bool {
        self.endpoints[index]
            .ejected_until_ns
            .is_some_and(|until| now_ns < until)
    }

    /// The peak-EWMA load of `index` at `now_ns`: decayed latency × (pending + 1).
    pub fn load(&self, index: usize, now_ns: u64) -> f64 {
        let endpoint = &self.endpoints[index];
        let elapsed = now_ns.saturating_sub(endpoint.rtt_stamp_ns) as f64;
        // With no new sample the estimate decays toward zero, so an idle endpoint is retried.
        let rtt = endpoint.rtt_ewma_ns * decay(elapsed * self.decay_per_ns);
        rtt.max(1.0) * f64::from(endpoint.pending + 1)
    }

    /// Picks an endpoint for one call at `now_ns` and counts it as pending; `None` if there
    /// is none. Call [`Balancer::handle_result`] with the outcome.
    pub fn pick(&mut self, now_ns: u64, rng: &mut SplitMix64) -> Option<usize> {
        // Fast path: no zone preference and nobody ejected, so every endpoint is a candidate
        // and the two choices are drawn directly (O(1) instead of a scan).
        let count = self.endpoints.len();
        if self.config.zone_local.is_none() && now_ns >= self.ejections_end_ns && count >= 2 {
            let first = rng.below(count as u64) as usize;
            let mut second = rng.below(count as u64 - 1) as usize;
            if second >= first {
                second += 1;
            }
            let chosen = if self.load(first, now_ns) <= self.load(second, now_ns) {
                first
            } else {
                second
            };
            self.endpoints[chosen].pending += 1;
            return Some(chosen);
        }
        self.fill_candidates(now_ns);
        let count = self.candidates.len();
        let chosen = match count {
            0 => return None,
            1 => self.candidates[0],
            _ => {
                let first = rng.below(count as u64) as usize;
                let mut second = rng.below(count as u64 - 1) as usize;
                if second >= first {
                    second += 1;
                }
                let (a, b) = (self.candidates[first], self.candidates[second]);
                if self.load(a, now_ns) <= self.load(b, now_ns) {
                    a
                } else {
                    b
                }
            }
        };
        self.endpoints[chosen].pending += 1;
        Some(chosen)
    }

    fn fill_candidates(&mut self, now_ns: u64) {
        self.candidates.clear();
        let available = |e: &Endpoint| e.ejected_until_ns.is_none_or(|until| now_ns >= until);
        if let Some(zone) = &self.config.zone_local {
            let local = self
                .endpoints
                .iter()
                .filter(|e| e.zone.as_ref() == Some(zone))
                .count();
            let healthy = self
                .endpoints
                .iter()
                .filter(|e| e.zone.as_ref() == Some(zone) && available(e))
                .count();
            if local > 0 && healthy as f64 >= self.config.zone_healthy_share_min * local as f64 {
                for (i, e) in self.endpoints.iter().enumerate() {
                    if e.zone.as_ref() == Some(zone) && available(e) {
                        self.candidates.push(i);
                    }
                }
                return;
            }
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if available(e) {
                self.candidates.push(i);
            }
        }
        if self.candidates.is_empty() {
            // Everything ejected: panic mode, as Envoy does — use them all.
            self.candidates.extend(0..self.endpoints.len());
        }
    }

    /// Records the outcome of a call to `index` picked earlier. Returns an ejection if this
    /// outcome caused one.
    pub fn handle_result(
        &mut self,
        now_ns: u64,
        index: usize,
        rtt_ns: u64,
        is_success: bool,
    ) -> Option<Ejection> {
        let decay_per_ns = self.decay_per_ns;
        let endpoint = &mut self.endpoints[index];
        assert!(
            endpoint.pending > 0,
            "result for a call that was not picked"
        );
        endpoint.pending -= 1;
        let rtt = rtt_ns as f64;
        if rtt > endpoint.rtt_ewma_ns {
            endpoint.rtt_ewma_ns = rtt;
        } else {
            let elapsed = now_ns.saturating_sub(endpoint.rtt_stamp_ns) as f64;
            let weight = decay(elapsed * decay_per_ns);
            endpoint.rtt_ewma_ns = endpoint.rtt_ewma_ns * weight + rtt * (1.0 - weight);
        }
        endpoint.rtt_stamp_ns = now_ns;
        endpoint.interval_calls += 1;
        if is_success {
            endpoint.interval_successes += 1;
            endpoint.errors_consecutive = 0;
            return None;
        }
        endpoint.errors_consecutive += 1;
        if endpoint.errors_consecutive >= self.config.consecutive_errors_eject {
            return self.eject(now_ns, index, EjectionReason::ConsecutiveErrors);
        }
        None
    }

    /// Calls picked for `index` and not yet finished.
    pub fn pending(&self, index: usize) -> u32 {
        self.endpoints[index].pending
    }

    /// A call picked for `index` was abandoned before it finished (cancelled): it no longer
    /// counts as pending, and says nothing about the endpoint.
    pub fn handle_cancel(&mut self, index: usize) {
        let endpoint = &mut self.endpoints[index];
        assert!(
            endpoint.pending > 0,
            "cancel for a call that was not picked"
        );
        endpoint.pending -= 1;
    }

    /// A peer reports `index` as an outlier: eject it like a local detection would.
    pub fn handle_peer_ejection(&mut self, now_ns: u64, index: usize) -> Option<Ejection> {
        self.eject(now_ns, index, EjectionReason::Peer)
    }

    fn eject(&mut self, now_ns: u64, index: usize, reason: EjectionReason) -> Option<Ejection> {
        if self.is_ejected(index, now_ns) {
            return None;
        }
        let ejected = (0..self.endpoints.len())
            .filter(|i| self.is_ejected(*i, now_ns))
            .count();
        let allowed = (self.config.ejection_share_max * self.endpoints.len() as f64).floor();
        if (ejected + 1) as f64 > allowed {
            return None;
        }
        let endpoint = &mut self.endpoints[index];
        endpoint.ejections += 1;
        endpoint.errors_consecutive = 0;
        let until_ns = now_ns + self.config.ejection_base_ns * u64::from(endpoint.ejections);
        endpoint.ejected_until_ns = Some(until_ns);
        self.ejections_end_ns = self.ejections_end_ns.max(until_ns);
        Some(Ejection {
            endpoint: index,
            reason,
            until_ns,
        })
    }

    /// Checks the invariants that hold between calls.
    ///
    /// # Panics
    /// Panics if one is broken.
    pub fn check_invariants(&self, now_ns: u64) {
        assert!(self.endpoints.len() <= ENDPOINTS_MAX);
        for endpoint in &self.endpoints {
            assert!(endpoint.rtt_ewma_ns.is_finite() && endpoint.rtt_ewma_ns >= 0.0);
            assert!(endpoint.interval_successes <= endpoint.interval_calls);
            if let Some(until) = endpoint.ejected_until_ns {
                assert!(endpoint.ejections > 0, "an ejected endpoint was ejected");
                assert!(
                    until <= self.ejections_end_ns,
                    "ejections_end_ns covers every ejection"
                );
            }
        }
        let ejected = (0..self.endpoints.len())
            .filter(|i| self.is_ejected(*i, now_ns))
            .count();
        let allowed = (self.config.ejection_share_max * self.endpoints.len() as f64).floor();
        assert!(
            ejected as f64 <= allowed.max(0.0),
            "ejections within their share"
        );
    }

    /// Runs the periodic success-rate detection over the interval since the last call, then
    /// starts a new interval. Returns the endpoints ejected.
    pub fn handle_interval(&mut self, now_ns: u64) -> Vec<Ejection> {
        let calls_min = self.config.success_rate_calls_min.max(1);
        let rates: Vec<(usize, f64)> = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.interval_calls >= calls_min)
            .map(|(i, e)| {
                (
                    i,
                    f64::from(e.interval_successes) / f64::from(e.interval_calls),
                )
            })
            .collect();
        let mut ejections = Vec::new();
        if rates.len() >= self.config.success_rate_endpoints_min && !rates.is_empty() {
            let n = rates.len() as f64;
            let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
            let variance = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
            let floor = mean - self.config.success_rate_stdev_factor * variance.sqrt();
            for (index, rate) in rates {
                if rate < floor
                    && let Some(e) = self.eject(now_ns, index, EjectionReason::SuccessRate)
                {
                    ejections.push(e);
                }
            }
        }
        for endpoint in &mut self.endpoints {
            endpoint.interval_calls = 0;
            endpoint.interval_successes = 0;
        }
        ejections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn balance_decay_approximates_exp() {
        for i in 0..=100 {
            let x = f64::from(i) / 100.0;
            let exact = (-x).exp();
            assert!((decay(x) - exact).abs() <= 0.02 * exact, "x {x}");
        }
        assert!(decay(50.0) < 1e-3 && decay(50.0) > 0.0);
        assert!(
            decay(0.5e-4) > decay(1.5e-4) && decay(1.5e-4) < 1.0,
            "monotone across the shortcut"
        );
        assert_eq!(decay(0.0), 1.0);
    }

    #[test]
    fn balance_p2c_avoids_slow_endpoint() {
        // Ten endpoints, one ten times slower: a closed loop at 1 ms steps where each call
        // completes after its endpoint's latency. The slow one must get ≤ 5% of calls.
        let mut balancer = Balancer::new(BalanceConfig::default());
        for _ in 0..10 {
            balancer.add(None);
        }
        let mut rng = SplitMix64::new(9);
        let mut inflight: Vec<(u64, usize)> = Vec::new();
        let mut picks = [0u32; 10];
        for step in 0..20_000u64 {
            let now = step * MS / 10;
            inflight.retain(|(done, index)| {
                if *done <= now {
                    let rtt = if *index == 0 { 50 * MS } else { 5 * MS };
                    balancer.handle_result(now, *index, rtt, true);
                    false
                } else {
                    true
                }
            });
            let index = balancer.pick(now, &mut rng).expect("endpoints exist");
            picks[index] += 1;
            let rtt = if index == 0 { 50 * MS } else { 5 * MS };
            inflight.push((now + rtt, index));
        }
        balancer.check_invariants(2 * 1_000 * MS);
        let share = f64::from(picks[0]) / 20_000.0;
        assert!(share <= 0.05, "slow endpoint got {share}");
        assert!(picks[1..].iter().all(|p| *p > 1_000), "{picks:?}");
    }

    #[test]
    fn balance_ejects_after_consecutive_errors_and_returns() {
        let mut balancer = Balancer::new(BalanceConfig {
            consecutive_errors_eject: 3,
            ejection_base_ns: 1_000 * MS,
            ..BalanceConfig::default()
        });
        for _ in 0..4 {
            balancer.add(None);
        }
        let mut ejection = None;
        for _ in 0..3 {
            balancer.endpoints[2].pending += 1;
            ejection = balancer.handle_result(0, 2, MS, false);
        }
        assert_eq!(
            ejection.map(|e| e.reason),
            Some(EjectionReason::ConsecutiveErrors)
        );
        let mut rng = SplitMix64::new(1);
        for _ in 0..100 {
            let index = balancer.pick(10, &mut rng).expect("endpoints exist");
            assert_ne!(index, 2);
            balancer.handle_result(10, index, MS, true);
        }
        assert!(!balancer.is_ejected(2, 1_000 * MS));
    }

    #[test]
    fn balance_success_rate_ejects_the_outlier_only() {
        let mut balancer = Balancer::new(BalanceConfig::default());
        for _ in 0..6 {
            balancer.add(None);
        }
        for index in 0..6 {
            for call in 0..200 {
                balancer.endpoints[index].pending += 1;
                // Endpoint 4 fails every other call, but never 5 times in a row.
                let ok = index != 4 || call % 2 == 0;
                balancer.handle_result(0, index, MS, ok);
            }
        }
        let ejections = balancer.handle_interval(0);
        assert_eq!(ejections.len(), 1);
        assert_eq!(ejections[0].endpoint, 4);
        assert_eq!(ejections[0].reason, EjectionReason::SuccessRate);
    }

    #[test]
    fn balance_ejection_share_is_capped() {
        let mut balancer = Balancer::new(BalanceConfig::default());
        for _ in 0..4 {
            balancer.add(None);
        }
        let ejected = (0..4)
            .filter(|i| balancer.handle_peer_ejection(0, *i).is_some())
            .count();
        assert_eq!(ejected, 2);
    }

    #[test]
    fn balance_zone_affinity_prefers_local_until_unhealthy() {
        let mut balancer = Balancer::new(BalanceConfig {
            zone_local: Some("a".into()),
            ejection_share_max: 1.0,
            ..BalanceConfig::default()
        });
        for zone in ["a", "a", "b", "b"] {
            balancer.add(Some(zone.into()));
        }
        let mut rng = SplitMix64::new(5);
        for _ in 0..100 {
            let index = balancer.pick(0, &mut rng).expect("endpoints exist");
            assert!(index < 2, "picked remote {index}");
            balancer.handle_result(0, index, MS, true);
        }
        // Half of zone a gone (below 70% healthy): spill over to every available endpoint.
        balancer.handle_peer_ejection(0, 0);
        let remote = (0..100)
            .filter(|_| {
                let index = balancer.pick(1, &mut rng).expect("endpoints exist");
                balancer.handle_result(1, index, MS, true);
                assert_ne!(index, 0);
                index >= 2
            })
            .count();
        assert!(remote > 30, "remote picks {remote}");
    }
}
