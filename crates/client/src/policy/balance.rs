//! Load-aware balancing core: power of two choices (Mitzenmacher) over a peak-EWMA latency
//! estimate (Finagle's and linkerd's `PeakEwma`: jumps up to a slower sample at once, decays
//! toward faster ones with time constant `decay_ns`, times the calls in flight + 1), outlier
//! ejection (Envoy's consecutive errors and success-rate rules, with ejection time growing with
//! each ejection and at most `ejection_share_max` of endpoints ejected), and zone affinity
//! (stay in the local zone while enough of it is healthy).
//!
//! Shared between threads without a lock on the hot path: each endpoint's state is atomics
//! (the peak-EWMA as `f64` bits, the calls in flight and the interval's counts packed in one
//! word), so [`Balancer::pick`] and [`Balancer::handle_result`] take `&self`; membership
//! changes ([`Balancer::add`], [`Balancer::remove`]) take `&mut self`, and
//! [`Balancer::share`] makes another handle on the same endpoints (the tower layer swaps such
//! handles when the endpoint set changes). Ejections take a small lock, so the share cap holds.
//! Time and randomness are inputs. Endpoints are indices; the caller maps them to services.
//! [`Balancer::handle_peer_ejection`] takes cluster evidence (a peer ejected this endpoint,
//! by gossip) through the same ejection path. A caller that does not time every call (see
//! [`crate::policy::sample::RttSampler`]) reports the untimed successes with
//! [`Balancer::handle_untimed_success`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// A caller times at most one call per this interval (see
    /// [`crate::policy::sample::RttSampler`]): a success that started sooner after the last
    /// timed call is counted without its RTT. `0` times every call.
    pub rtt_sample_gap_ns: u64,
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
            rtt_sample_gap_ns: 1_000,
        }
    }
}

/// Calls in flight to one endpoint, at most (the low bits of [`Endpoint::counts`]).
pub const PENDING_MAX: u64 = (1 << PENDING_BITS) - 1;
const PENDING_BITS: u32 = 20;
const CALLS_SHIFT: u32 = PENDING_BITS;
const CALLS_BITS: u32 = 22;
const SUCCESSES_SHIFT: u32 = CALLS_SHIFT + CALLS_BITS;
const FIELD_MASK: u64 = (1 << CALLS_BITS) - 1;
/// An interval's counts are halved (keeping the success rate) once calls reach this, so the
/// 22-bit fields never overflow when `handle_interval` is called rarely.
const CALLS_HALVE_AT: u64 = 1 << (CALLS_BITS - 1);
const _: () = assert!(SUCCESSES_SHIFT + CALLS_BITS == 64);

fn pending_of(counts: u64) -> u64 {
    counts & PENDING_MAX
}

fn calls_of(counts: u64) -> u64 {
    (counts >> CALLS_SHIFT) & FIELD_MASK
}

fn successes_of(counts: u64) -> u64 {
    (counts >> SUCCESSES_SHIFT) & FIELD_MASK
}

/// One endpoint's state, shared by every handle of the balancer (see [`Balancer::share`]).
#[derive(Debug)]
struct Endpoint {
    zone: Option<String>,
    /// The peak-EWMA RTT in nanoseconds, as `f64` bits.
    rtt_ewma_bits: AtomicU64,
    rtt_stamp_ns: AtomicU64,
    /// Calls in flight (bits 0..20), then the interval's calls (20..42) and successes
    /// (42..64): one atomic add starts a call, one ends it and counts it.
    counts: AtomicU64,
    errors_consecutive: AtomicU32,
    /// Ejected while `now_ns < ejected_until_ns` (0: never ejected).
    ejected_until_ns: AtomicU64,
    ejections: AtomicU32,
}

impl Endpoint {
    fn rtt_ewma_ns(&self) -> f64 {
        f64::from_bits(self.rtt_ewma_bits.load(Ordering::Relaxed))
    }

    fn pending(&self) -> u64 {
        pending_of(self.counts.load(Ordering::Relaxed))
    }

    fn is_available(&self, now_ns: u64) -> bool {
        now_ns >= self.ejected_until_ns.load(Ordering::Relaxed)
    }

    /// Starts a call.
    ///
    /// # Panics
    /// Panics beyond [`PENDING_MAX`] calls in flight.
    fn start(&self) {
        let before = self.counts.fetch_add(1, Ordering::Relaxed);
        if pending_of(before) >= PENDING_MAX {
            self.counts.fetch_sub(1, Ordering::Relaxed);
            panic!("more than PENDING_MAX calls in flight to one endpoint");
        }
    }

    /// Ends a call and counts it in the interval: one atomic add takes one from the calls
    /// in flight and adds one call (and maybe one success).
    ///
    /// # Panics
    /// Panics if no call is pending.
    fn finish(&self, is_success: bool) {
        let delta = (1u64 << CALLS_SHIFT)
            .wrapping_add(u64::from(is_success) << SUCCESSES_SHIFT)
            .wrapping_sub(1);
        let before = self.counts.fetch_add(delta, Ordering::Relaxed);
        assert!(
            pending_of(before) > 0,
            "result for a call that was not picked"
        );
        if calls_of(before) + 1 >= CALLS_HALVE_AT {
            self.rewrite_interval(|calls, successes| (calls / 2, successes / 2));
        }
    }

    /// Ends a run of consecutive errors.
    fn clear_errors(&self) {
        // Read first: a store on every success would bounce the line between cores.
        if self.errors_consecutive.load(Ordering::Relaxed) != 0 {
            self.errors_consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// Rewrites the interval's counts with `f`, keeping the calls in flight.
    fn rewrite_interval(&self, f: impl Fn(u64, u64) -> (u64, u64)) {
        let _ = self
            .counts
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |counts| {
                let (calls, successes) = f(calls_of(counts), successes_of(counts));
                debug_assert!(successes <= calls);
                Some(pending_of(counts) | calls << CALLS_SHIFT | successes << SUCCESSES_SHIFT)
            });
    }
}

/// The state every handle of one balancer shares besides the endpoints.
#[derive(Debug, Default)]
struct Common {
    /// No endpoint is ejected at or after this time (lets a pick skip the candidate scan).
    ejections_end_ns: AtomicU64,
    /// Taken to eject, so that the share cap holds under concurrent ejections (rare path).
    ejecting: Mutex<()>,
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
#[derive(Debug)]
pub struct Balancer {
    config: BalanceConfig,
    endpoints: Vec<Arc<Endpoint>>,
    common: Arc<Common>,
    /// `1 / decay_ns`, so the hot path multiplies instead of dividing.
    decay_per_ns: f64,
    /// Elapsed times below this decay an estimate by under 0.01% (`decay_ns / 10⁴`): a pick
    /// compares undecayed estimates, and a result takes the decay's linear term.
    negligible_ns: u64,
}

/// `e^(−x)` for `x ≥ 0`, approximated as `1 / (1 + x + x²/2 + x³/6)`: positive, monotone,
/// within 2% of the exact value for `x ≤ 1` and never above 1 — all a decay weight needs,
/// at a fraction of `f64::exp`'s cost. (Calls usually come far closer together than the
/// time constant; those never get here, see `Balancer::negligible_ns`.)
fn decay(x: f64) -> f64 {
    debug_assert!(x >= 0.0);
    1.0 / (1.0 + x * (1.0 + x * (0.5 + x * (1.0 / 6.0))))
}

/// `ns` as `f64` through a signed conversion: one instruction on x86-64, where an unsigned
/// one takes four on the pick path's critical chain. Durations past 292 years saturate.
fn ns_f64(ns: u64) -> f64 {
    ns.min(i64::MAX as u64) as i64 as f64
}

/// Endpoints kept at most.
pub const ENDPOINTS_MAX: usize = 10_000;

impl Balancer {
    /// A balancer with no endpoints.
    pub fn new(config: BalanceConfig) -> Self {
        assert!(config.decay_ns > 0, "decay_ns must be positive");
        assert!((0.0..=1.0).contains(&config.ejection_share_max));
        let decay_per_ns = 1.0 / config.decay_ns as f64;
        let negligible_ns = config.decay_ns / 10_000;
        Self {
            config,
            endpoints: Vec::new(),
            common: Arc::new(Common::default()),
            decay_per_ns,
            negligible_ns,
        }
    }

    /// Another handle on the same endpoints: picks, results and ejections through either are
    /// seen by both; an `add` or `remove` changes only the handle it is made on (the other
    /// keeps its view until replaced, and calls in flight on it finish on the same state).
    pub fn share(&self) -> Balancer {
        Balancer {
            config: self.config.clone(),
            endpoints: self.endpoints.clone(),
            common: self.common.clone(),
            decay_per_ns: self.decay_per_ns,
            negligible_ns: self.negligible_ns,
        }
    }

    /// Adds an endpoint in `zone`; returns its index.
    ///
    /// # Panics
    /// Panics beyond [`ENDPOINTS_MAX`] endpoints.
    pub fn add(&mut self, zone: Option<String>) -> usize {
        assert!(self.endpoints.len() < ENDPOINTS_MAX, "too many endpoints");
        let rtt_initial_ns = self.config.rtt_initial_ns as f64;
        self.endpoints.push(Arc::new(Endpoint {
            zone,
            rtt_ewma_bits: AtomicU64::new(rtt_initial_ns.to_bits()),
            rtt_stamp_ns: AtomicU64::new(0),
            counts: AtomicU64::new(0),
            errors_consecutive: AtomicU32::new(0),
            ejected_until_ns: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
        }));
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
        !self.endpoints[index].is_available(now_ns)
    }

    /// The peak-EWMA load of `index` at `now_ns`: decayed latency × (pending + 1).
    pub fn load(&self, index: usize, now_ns: u64) -> f64 {
        let endpoint = &self.endpoints[index];
        let stamp_ns = endpoint.rtt_stamp_ns.load(Ordering::Relaxed);
        let elapsed = now_ns.saturating_sub(stamp_ns);
        // With no new sample the estimate decays toward zero, so an idle endpoint is retried.
        let mut rtt = endpoint.rtt_ewma_ns();
        if elapsed >= self.negligible_ns {
            rtt *= decay(ns_f64(elapsed) * self.decay_per_ns);
        }
        let pending = u32::try_from(endpoint.pending()).expect("PENDING_MAX fits in u32");
        rtt.max(1.0) * f64::from(pending + 1)
    }

    /// Picks an endpoint for one call at `now_ns` and counts it as pending; `None` if there
    /// is none. Call [`Balancer::handle_result`] (or [`Balancer::handle_cancel`]) after.
    ///
    /// # Panics
    /// Panics beyond [`PENDING_MAX`] calls in flight to the endpoint picked.
    pub fn pick(&self, now_ns: u64, rng: &mut SplitMix64) -> Option<usize> {
        // Fast path: no zone preference and nobody ejected, so every endpoint is a candidate
        // and the two choices are drawn directly (O(1) instead of a scan).
        let count = self.endpoints.len();
        let ejections_end_ns = self.common.ejections_end_ns.load(Ordering::Relaxed);
        let chosen = if self.config.zone_local.is_none() && now_ns >= ejections_end_ns {
            match count {
                0 => return None,
                1 => 0,
                _ => {
                    let (first, second) = two_of(count, rng);
                    self.lighter(first, second, now_ns)
                }
            }
        } else {
            // Candidates are found by scanning (rare: zones or ejections), without a scratch
            // list, so that a pick needs neither `&mut self` nor an allocation.
            let (zone_only, count) = self.candidates(now_ns);
            let nth = |n: usize| self.candidate(zone_only, now_ns, n);
            match count {
                0 => return None,
                1 => nth(0),
                _ => {
                    let (first, second) = two_of(count, rng);
                    self.lighter(nth(first), nth(second), now_ns)
                }
            }
        };
        self.endpoints[chosen].start();
        Some(chosen)
    }

    fn lighter(&self, a: usize, b: usize, now_ns: u64) -> usize {
        if self.load(a, now_ns) <= self.load(b, now_ns) {
            a
        } else {
            b
        }
    }

    /// Which candidates a pick chooses among: `Some(zone)` (the local zone's available
    /// endpoints), `None` with a count (every available endpoint), or `None` with the count
    /// of all endpoints in panic mode (everything ejected, as Envoy does: use them all).
    fn candidates(&self, now_ns: u64) -> (Candidates<'_>, usize) {
        if let Some(zone) = &self.config.zone_local {
            let in_zone = |e: &&Arc<Endpoint>| e.zone.as_ref() == Some(zone);
            let local = self.endpoints.iter().filter(in_zone).count();
            let healthy = self
                .endpoints
                .iter()
                .filter(in_zone)
                .filter(|e| e.is_available(now_ns))
                .count();
            if local > 0 && healthy as f64 >= self.config.zone_healthy_share_min * local as f64 {
                return (Candidates::Zone(zone), healthy);
            }
        }
        let available = self
            .endpoints
            .iter()
            .filter(|e| e.is_available(now_ns))
            .count();
        if available == 0 {
            return (Candidates::All, self.endpoints.len());
        }
        (Candidates::Available, available)
    }

    /// The `n`-th candidate's index.
    fn candidate(&self, candidates: Candidates<'_>, now_ns: u64, n: usize) -> usize {
        let is_candidate = |e: &Arc<Endpoint>| match candidates {
            Candidates::Zone(zone) => e.zone.as_ref() == Some(zone) && e.is_available(now_ns),
            Candidates::Available => e.is_available(now_ns),
            Candidates::All => true,
        };
        self.endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| is_candidate(e))
            .nth(n)
            .map(|(i, _)| i)
            // An ejection between counting and choosing can shrink the set: take the first.
            .unwrap_or(0)
    }

    /// Records the outcome of a call to `index` picked earlier. Returns an ejection if this
    /// outcome caused one.
    ///
    /// # Panics
    /// Panics if no call to `index` is pending.
    pub fn handle_result(
        &self,
        now_ns: u64,
        index: usize,
        rtt_ns: u64,
        is_success: bool,
    ) -> Option<Ejection> {
        let endpoint = &self.endpoints[index];
        endpoint.finish(is_success);
        // Two results at once may each update from the same old estimate, and one of them is
        // lost: an estimate needs no more than that, and a CAS loop would cost every call.
        let rtt = ns_f64(rtt_ns);
        let rtt_ewma_ns = endpoint.rtt_ewma_ns();
        let next = if rtt > rtt_ewma_ns {
            rtt
        } else {
            let stamp_ns = endpoint.rtt_stamp_ns.load(Ordering::Relaxed);
            let elapsed = now_ns.saturating_sub(stamp_ns);
            let x = ns_f64(elapsed) * self.decay_per_ns;
            if elapsed < self.negligible_ns {
                // The weight is 1 − x to within x²/2 < 10⁻⁸ of e^(−x).
                rtt_ewma_ns + (rtt - rtt_ewma_ns) * x
            } else {
                let weight = decay(x);
                rtt_ewma_ns * weight + rtt * (1.0 - weight)
            }
        };
        debug_assert!(next.is_finite() && next >= 0.0);
        endpoint
            .rtt_ewma_bits
            .store(next.to_bits(), Ordering::Relaxed);
        endpoint.rtt_stamp_ns.store(now_ns, Ordering::Relaxed);
        if is_success {
            endpoint.clear_errors();
            return None;
        }
        let errors = endpoint.errors_consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if errors >= self.config.consecutive_errors_eject {
            return self.eject(now_ns, index, EjectionReason::ConsecutiveErrors);
        }
        None
    }

    /// Records a success of a call to `index` picked earlier whose RTT was not measured (see
    /// [`crate::policy::sample::RttSampler`]): it ends the call and counts it, and leaves the
    /// latency estimate as it is.
    ///
    /// # Panics
    /// Panics if no call to `index` is pending.
    pub fn handle_untimed_success(&self, index: usize) {
        let endpoint = &self.endpoints[index];
        endpoint.finish(true);
        endpoint.clear_errors();
    }

    /// Calls picked for `index` and not yet finished.
    pub fn pending(&self, index: usize) -> u32 {
        u32::try_from(self.endpoints[index].pending()).expect("PENDING_MAX fits in u32")
    }

    /// A call picked for `index` was abandoned before it finished (cancelled): it no longer
    /// counts as pending, and says nothing about the endpoint.
    ///
    /// # Panics
    /// Panics if no call to `index` is pending.
    pub fn handle_cancel(&self, index: usize) {
        let before = self.endpoints[index].counts.fetch_sub(1, Ordering::Relaxed);
        assert!(
            pending_of(before) > 0,
            "cancel for a call that was not picked"
        );
    }

    /// A peer reports `index` as an outlier: eject it like a local detection would.
    pub fn handle_peer_ejection(&self, now_ns: u64, index: usize) -> Option<Ejection> {
        self.eject(now_ns, index, EjectionReason::Peer)
    }

    fn eject(&self, now_ns: u64, index: usize, reason: EjectionReason) -> Option<Ejection> {
        let _ejecting = self
            .common
            .ejecting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        let endpoint = &self.endpoints[index];
        let ejections = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        endpoint.errors_consecutive.store(0, Ordering::Relaxed);
        let until_ns = now_ns + self.config.ejection_base_ns * u64::from(ejections);
        // The end first, so a pick that sees the ejection also sees it must scan.
        self.common
            .ejections_end_ns
            .fetch_max(until_ns, Ordering::Relaxed);
        endpoint.ejected_until_ns.store(until_ns, Ordering::Relaxed);
        assert!(self.is_ejected(index, now_ns) || until_ns == now_ns);
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
        let ejections_end_ns = self.common.ejections_end_ns.load(Ordering::Relaxed);
        for endpoint in &self.endpoints {
            let rtt = endpoint.rtt_ewma_ns();
            assert!(rtt.is_finite() && rtt >= 0.0);
            let counts = endpoint.counts.load(Ordering::Relaxed);
            assert!(successes_of(counts) <= calls_of(counts));
            let until = endpoint.ejected_until_ns.load(Ordering::Relaxed);
            if until > 0 {
                assert!(
                    endpoint.ejections.load(Ordering::Relaxed) > 0,
                    "an ejected endpoint was ejected"
                );
                assert!(
                    until <= ejections_end_ns,
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
    pub fn handle_interval(&self, now_ns: u64) -> Vec<Ejection> {
        let calls_min = u64::from(self.config.success_rate_calls_min.max(1));
        let rates: Vec<(usize, f64)> = self
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let counts = e.counts.load(Ordering::Relaxed);
                let calls = calls_of(counts);
                (calls >= calls_min).then(|| (i, successes_of(counts) as f64 / calls as f64))
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
        for endpoint in &self.endpoints {
            endpoint.rewrite_interval(|_, _| (0, 0));
        }
        ejections
    }

    /// Counts a call to `index` as pending without picking it (tests drive results directly).
    #[cfg(test)]
    fn force_pending(&self, index: usize) {
        self.endpoints[index].start();
    }
}

/// Two distinct indices below `count` (≥ 2), uniformly.
fn two_of(count: usize, rng: &mut SplitMix64) -> (usize, usize) {
    debug_assert!(count >= 2);
    let first = rng.below(count as u64) as usize;
    let mut second = rng.below(count as u64 - 1) as usize;
    if second >= first {
        second += 1;
    }
    (first, second)
}

/// The candidate set of a pick off the fast path; see [`Balancer::candidates`].
#[derive(Debug, Clone, Copy)]
enum Candidates<'a> {
    Zone(&'a String),
    Available,
    All,
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
        assert!(decay(1e-4) < 1.0 && decay(1e-4) > 1.0 - 1.1e-4);
        assert_eq!(decay(0.0), 1.0);
    }

    #[test]
    fn balance_estimate_decays_the_same_across_the_negligible_bound() {
        // A result just under and just over `negligible_ns` after the last moves the
        // estimate toward the sample by (nearly) the same amount, and the idle decay a pick
        // sees is continuous there to within 0.01%.
        let mut balancer = Balancer::new(BalanceConfig::default());
        balancer.add(None);
        balancer.add(None);
        let bound = balancer.negligible_ns;
        assert_eq!(bound, BalanceConfig::default().decay_ns / 10_000);
        let start = 50 * MS;
        for index in 0..2 {
            balancer.force_pending(index);
            assert_eq!(balancer.handle_result(start, index, 40 * MS, true), None);
        }
        let ewma = |b: &Balancer, i: usize| b.endpoints[i].rtt_ewma_ns();
        assert_eq!(
            ewma(&balancer, 0),
            40.0 * MS as f64,
            "a slower sample is taken at once"
        );
        let under = balancer.load(0, start + bound - 1);
        let over = balancer.load(0, start + bound + 1);
        assert_eq!(under, 40.0 * MS as f64, "undecayed under the bound");
        assert!(
            over < under && over > under * (1.0 - 1.1e-4),
            "{under} {over}"
        );
        for (index, elapsed) in [(0, bound - 1), (1, bound + 1)] {
            balancer.force_pending(index);
            balancer.handle_result(start + elapsed, index, 0, true);
        }
        let (a, b) = (ewma(&balancer, 0), ewma(&balancer, 1));
        let expected = 40.0 * MS as f64 * 1e-4;
        for moved in [40.0 * MS as f64 - a, 40.0 * MS as f64 - b] {
            assert!(
                (moved - expected).abs() < expected * 1e-3,
                "moved {moved}, not {expected}"
            );
        }
        balancer.check_invariants(start + bound + 1);
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
            balancer.force_pending(2);
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
                balancer.force_pending(index);
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

    #[test]
    fn balance_untimed_success_ends_the_call_and_keeps_the_estimate() {
        let mut balancer = Balancer::new(BalanceConfig::default());
        balancer.add(None);
        let mut rng = SplitMix64::new(1);
        let index = balancer.pick(0, &mut rng).expect("one endpoint");
        assert_eq!(balancer.handle_result(MS, index, 80 * MS, false), None);
        let estimate = balancer.load(index, MS);
        assert!(
            estimate > 70.0 * MS as f64,
            "the timed failure set the peak"
        );
        let counts = balancer.endpoints[index].counts.load(Ordering::Relaxed);
        assert_eq!((calls_of(counts), successes_of(counts)), (1, 0));
        for _ in 0..3 {
            balancer.pick(MS, &mut rng).expect("one endpoint");
        }
        assert_eq!(balancer.pending(index), 3);
        balancer.handle_untimed_success(index);
        assert_eq!(balancer.pending(index), 2, "the call ended");
        let counts = balancer.endpoints[index].counts.load(Ordering::Relaxed);
        assert_eq!(
            (calls_of(counts), successes_of(counts)),
            (2, 1),
            "and counts as a success"
        );
        assert_eq!(
            balancer.endpoints[index]
                .errors_consecutive
                .load(Ordering::Relaxed),
            0,
            "a success ends the run of errors"
        );
        let per_pending = |b: &Balancer| b.load(index, MS) / f64::from(b.pending(index) + 1);
        assert_eq!(
            per_pending(&balancer),
            estimate,
            "the latency estimate did not move"
        );
        balancer.check_invariants(MS);
    }

    #[test]
    fn balance_shared_handle_sees_results_and_keeps_removed_state() {
        let mut first = Balancer::new(BalanceConfig::default());
        for _ in 0..3 {
            first.add(None);
        }
        let second = first.share();
        let mut rng = SplitMix64::new(3);
        let index = second.pick(0, &mut rng).expect("endpoints exist");
        assert_eq!(
            first.pending(index),
            1,
            "one endpoint state behind both handles"
        );
        // Removing it from the first handle does not disturb the call in flight on the second.
        first.remove(index);
        assert_eq!(first.len(), 2);
        assert_eq!(second.len(), 3);
        assert_eq!(second.handle_result(MS, index, 50 * MS, true), None);
        assert_eq!(second.pending(index), 0);
        assert!(
            second.load(index, MS) > 40.0 * MS as f64,
            "peak taken at once"
        );
        second.check_invariants(MS);
        first.check_invariants(MS);
    }

    #[test]
    fn balance_interval_counts_halve_instead_of_overflowing() {
        let mut balancer = Balancer::new(BalanceConfig::default());
        balancer.add(None);
        let calls = CALLS_HALVE_AT + 10;
        for call in 0..calls {
            balancer.force_pending(0);
            balancer.handle_result(0, 0, MS, call % 4 != 0);
        }
        let counts = balancer.endpoints[0].counts.load(Ordering::Relaxed);
        assert_eq!(pending_of(counts), 0);
        assert!(calls_of(counts) < CALLS_HALVE_AT);
        let rate = successes_of(counts) as f64 / calls_of(counts) as f64;
        assert!((rate - 0.75).abs() < 0.01, "rate kept: {rate}");
        balancer.check_invariants(0);
    }
}
