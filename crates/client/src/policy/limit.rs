//! Adaptive concurrency limits, as Netflix's concurrency-limits library defines them:
//! - AIMD: +1 when the limit is in use and no drop, ×`backoff_ratio` on a drop or timeout.
//! - Vegas: estimates the queue as `limit × (1 − rtt_noload / rtt)` and grows while it is
//!   small (below `3·log10(limit)`), shrinks when it is large (above `6·log10(limit)`).
//! - Gradient2: compares a long-term average RTT with the current one; the limit moves by
//!   `gradient = clamp(tolerance × long / short, 0.5, 1)` plus a small queue allowance, smoothed.
//!
//! Each algorithm is a pure `&mut self` state machine fed one sample per completed call
//! (`now`, RTT, calls in flight at its start, whether it was dropped). [`ConcurrencyLimiter`]
//! wraps one with a lock-free in-flight counter so a tower layer and the simulator share it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One completed call, as an algorithm sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When the call completed.
    pub now_ns: u64,
    /// How long it took.
    pub rtt_ns: u64,
    /// Calls in flight when it started (including itself).
    pub inflight: u32,
    /// It failed from overload (rejected, timed out).
    pub is_dropped: bool,
}

/// Which algorithm, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LimitAlgorithm {
    /// Additive increase, multiplicative decrease.
    Aimd {
        /// Multiplier on a drop (Netflix default 0.9).
        backoff_ratio: f64,
        /// A call slower than this counts as a drop.
        timeout_ns: u64,
    },
    /// TCP Vegas–style queue estimation.
    Vegas {
        /// Weight of a new limit against the old (1 = no smoothing).
        smoothing: f64,
        /// Reset the no-load RTT every `probe_multiplier × limit` samples.
        probe_multiplier: u32,
    },
    /// Long-term vs short-term RTT gradient.
    Gradient2 {
        /// RTT inflation tolerated before the limit shrinks (Netflix default 1.5).
        rtt_tolerance: f64,
        /// Weight of a new limit against the old (Netflix default 0.2).
        smoothing: f64,
        /// Samples in the long-term exponential average (Netflix default 600).
        long_window: u32,
        /// Extra calls allowed on top of the gradient (Netflix default 4).
        queue_size: u32,
    },
}

impl LimitAlgorithm {
    /// AIMD with Netflix's defaults.
    pub fn aimd() -> Self {
        LimitAlgorithm::Aimd {
            backoff_ratio: 0.9,
            timeout_ns: 5_000_000_000,
        }
    }

    /// Vegas with Netflix's defaults.
    pub fn vegas() -> Self {
        LimitAlgorithm::Vegas {
            smoothing: 1.0,
            probe_multiplier: 30,
        }
    }

    /// Gradient2 with Netflix's defaults.
    pub fn gradient2() -> Self {
        LimitAlgorithm::Gradient2 {
            rtt_tolerance: 1.5,
            smoothing: 0.2,
            long_window: 600,
            queue_size: 4,
        }
    }
}

/// Limits on the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitConfig {
    /// The algorithm.
    pub algorithm: LimitAlgorithm,
    /// Limit at start.
    pub limit_initial: u32,
    /// The limit never goes below this.
    pub limit_min: u32,
    /// The limit never goes above this.
    pub limit_max: u32,
}

impl LimitConfig {
    /// A configuration for `algorithm` with Netflix's bounds (start 20, 1..=1000).
    pub fn new(algorithm: LimitAlgorithm) -> Self {
        Self {
            algorithm,
            limit_initial: 20,
            limit_min: 1,
            limit_max: 1_000,
        }
    }
}

/// The state of one algorithm; see the module doc.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    config: LimitConfig,
    limit: f64,
    /// Vegas: lowest RTT seen since the last probe.
    rtt_noload_ns: u64,
    /// Vegas: samples since the last probe.
    probe_count: u64,
    /// Gradient2: long-term RTT average and how many samples it holds (for warm-up).
    rtt_long_ns: f64,
    rtt_long_samples: u32,
}

impl AdaptiveLimit {
    /// A fresh limit.
    ///
    /// # Panics
    /// Panics unless `1 ≤ limit_min ≤ limit_initial ≤ limit_max`.
    pub fn new(config: LimitConfig) -> Self {
        assert!(config.limit_min >= 1, "limit_min must be positive");
        assert!(
            config.limit_min <= config.limit_initial,
            "limit_initial below limit_min"
        );
        assert!(
            config.limit_initial <= config.limit_max,
            "limit_initial above limit_max"
        );
        Self {
            config,
            limit: f64::from(config.limit_initial),
            rtt_noload_ns: 0,
            probe_count: 0,
            rtt_long_ns: 0.0,
            rtt_long_samples: 0,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.limit as u32
    }

    /// Feeds one sample; returns the new limit.
    pub fn handle_sample(&mut self, sample: Sample) -> u32 {
        let next = match self.config.algorithm {
            LimitAlgorithm::Aimd {
                backoff_ratio,
                timeout_ns,
            } => self.aimd(sample, backoff_ratio, timeout_ns),
            LimitAlgorithm::Vegas {
                smoothing,
                probe_multiplier,
            } => self.vegas(sample, smoothing, probe_multiplier),
            LimitAlgorithm::Gradient2 {
                rtt_tolerance,
                smoothing,
                long_window,
                queue_size,
            } => self.gradient2(sample, rtt_tolerance, smoothing, long_window, queue_size),
        };
        let min = f64::from(self.config.limit_min);
        let max = f64::from(self.config.limit_max);
        self.limit = if next.is_finite() {
            next.clamp(min, max)
        } else {
            self.limit
        };
        self.check_invariants();
        self.limit()
    }

    fn aimd(&self, sample: Sample, backoff_ratio: f64, timeout_ns: u64) -> f64 {
        aimd_next(self.limit, sample, backoff_ratio, timeout_ns)
    }

    fn vegas(&mut self, sample: Sample, smoothing: f64, probe_multiplier: u32) -> f64 {
        self.probe_count += 1;
        let probe_every = u64::from(probe_multiplier) * self.limit as u64;
        if self.rtt_noload_ns == 0 || self.probe_count >= probe_every.max(1) {
            // Probe: forget the old minimum (the path may have changed) and restart from here.
            self.probe_count = 0;
            self.rtt_noload_ns = sample.rtt_ns.max(1);
            return self.limit;
        }
        self.rtt_noload_ns = self.rtt_noload_ns.min(sample.rtt_ns.max(1));
        let log = self.limit.log10().max(1.0);
        let target = if sample.is_dropped {
            self.limit - log
        } else if f64::from(sample.inflight) * 2.0 < self.limit {
            // Application-limited: the limit is not being tested.
            return self.limit;
        } else {
            let rtt = sample.rtt_ns.max(1) as f64;
            let queue = (self.limit * (1.0 - self.rtt_noload_ns as f64 / rtt)).ceil();
            let (alpha, beta, threshold) = (3.0 * log, 6.0 * log, log);
            if queue <= threshold {
                self.limit + beta
            } else if queue < alpha {
                self.limit + log
            } else if queue > beta {
                self.limit - log
            } else {
                return self.limit;
            }
        };
        self.limit * (1.0 - smoothing) + target * smoothing
    }

    fn gradient2(
        &mut self,
        sample: Sample,
        rtt_tolerance: f64,
        smoothing: f64,
        long_window: u32,
        queue_size: u32,
    ) -> f64 {
        let short = sample.rtt_ns.max(1) as f64;
        // The long average warms up as a plain mean over its first 10 samples, then decays.
        if self.rtt_long_samples < 10 {
            self.rtt_long_samples += 1;
            let n = f64::from(self.rtt_long_samples);
            self.rtt_long_ns += (short - self.rtt_long_ns) / n;
        } else {
            let factor = 2.0 / (f64::from(long_window) + 1.0);
            self.rtt_long_ns += (short - self.rtt_long_ns) * factor;
        }
        // This sample's gradient uses the long average before the pull-down below, as
        // Netflix's Gradient2Limit does.
        let long = self.rtt_long_ns;
        // A long average far above the present means load went away; let it catch up.
        if long / short > 2.0 {
            self.rtt_long_ns *= 0.95;
        }
        if f64::from(sample.inflight) < self.limit / 2.0 {
            return self.limit;
        }
        let gradient = (rtt_tolerance * long / short).clamp(0.5, 1.0);
        let target = self.limit * gradient + f64::from(queue_size);
        self.limit * (1.0 - smoothing) + target * smoothing
    }

    /// Checks the invariants that hold between samples.
    ///
    /// # Panics
    /// Panics if one is broken.
    pub fn check_invariants(&self) {
        assert!(self.limit.is_finite());
        assert!(self.limit >= f64::from(self.config.limit_min));
        assert!(self.limit <= f64::from(self.config.limit_max));
    }
}

/// AIMD's next limit (before clamping): its whole state is the limit, so
/// [`ConcurrencyLimiter`] can run it on an atomic.
fn aimd_next(limit: f64, sample: Sample, backoff_ratio: f64, timeout_ns: u64) -> f64 {
    if sample.is_dropped || sample.rtt_ns > timeout_ns {
        (limit * backoff_ratio).floor()
    } else if f64::from(sample.inflight) * 2.0 >= limit {
        limit + 1.0
    } else {
        limit
    }
}

/// Why a call was refused by the concurrency limiter; nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("concurrency limit {limit} reached")]
pub struct LimitReached {
    /// The limit at the time.
    pub limit: u32,
}

/// An adaptive limit plus the count of calls in flight, shareable between threads. Both live
/// in one atomic word (limit in the high half, calls in flight in the low half), so admitting
/// a call is one atomic add and ending one is one atomic subtract. A completed call's sample
/// updates AIMD (whose whole state is the limit) with a CAS on the word, and only when the
/// limit changes (no write at all when it is unused or at its maximum); Vegas and Gradient2
/// keep more state per sample and take a mutex.
#[derive(Debug)]
pub struct ConcurrencyLimiter {
    config: LimitConfig,
    /// Vegas and Gradient2 only: AIMD runs on `state` alone.
    algorithm: Mutex<AdaptiveLimit>,
    /// `limit << 32 | inflight`.
    state: AtomicU64,
}

const INFLIGHT_MASK: u64 = u32::MAX as u64;

fn limit_of(state: u64) -> u32 {
    (state >> 32) as u32
}

fn inflight_of(state: u64) -> u32 {
    (state & INFLIGHT_MASK) as u32
}

impl ConcurrencyLimiter {
    /// An idle limiter.
    ///
    /// # Panics
    /// Panics where [`AdaptiveLimit::new`] does, and if `limit_max` is `u32::MAX` (the
    /// in-flight count must have room above the limit).
    pub fn new(config: LimitConfig) -> Self {
        assert!(
            config.limit_max < u32::MAX,
            "limit_max must be below u32::MAX"
        );
        let algorithm = AdaptiveLimit::new(config);
        let state = AtomicU64::new(u64::from(algorithm.limit()) << 32);
        Self {
            config,
            algorithm: Mutex::new(algorithm),
            state,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        limit_of(self.state.load(Ordering::Acquire))
    }

    /// Calls in flight.
    pub fn inflight(&self) -> u32 {
        inflight_of(self.state.load(Ordering::Acquire))
    }

    /// Starts a call if under the limit; returns the in-flight count including it.
    ///
    /// # Errors
    /// [`LimitReached`] when at the limit.
    pub fn try_acquire(&self) -> Result<u32, LimitReached> {
        // Optimistic: count the call, and take it back if that went over the limit. A
        // refusal thus briefly counts a call that never ran, which can only refuse another
        // caller racing with it at the limit.
        let before = self.state.fetch_add(1, Ordering::AcqRel);
        let (limit, inflight) = (limit_of(before), inflight_of(before));
        if inflight >= limit {
            self.state.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitReached { limit });
        }
        Ok(inflight + 1)
    }

    /// Ends a call started by [`ConcurrencyLimiter::try_acquire`] and feeds its sample.
    /// Returns the new limit when it changed.
    ///
    /// # Panics
    /// Panics if no call was in flight.
    pub fn release(&self, sample: Sample) -> Option<u32> {
        let before = self.end_call();
        self.adapt(limit_of(before), sample)
    }

    /// Feeds the sample of a call the caller counted itself (the tower layer counts its
    /// calls in flight by the references their futures hold, `layer::limit`): the limit
    /// moves as [`ConcurrencyLimiter::release`] would move it; the count kept here does not.
    /// Returns the new limit when it changed.
    pub fn handle_sample(&self, sample: Sample) -> Option<u32> {
        self.adapt(self.limit(), sample)
    }

    /// Moves the limit, last seen at `limit`, by `sample`; the new limit if it changed.
    fn adapt(&self, limit: u32, sample: Sample) -> Option<u32> {
        if let LimitAlgorithm::Aimd {
            backoff_ratio,
            timeout_ns,
        } = self.config.algorithm
        {
            let (min, max) = (self.config.limit_min, self.config.limit_max);
            let next_of = |old: u32| {
                let next = aimd_next(f64::from(old), sample, backoff_ratio, timeout_ns);
                (next as u32).clamp(min, max)
            };
            // The common case (no drop, limit at its maximum or unused) writes nothing more.
            if next_of(limit) == limit {
                return None;
            }
            return self.update_limit(next_of);
        }
        let mut algorithm = self
            .algorithm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = algorithm.limit();
        let new = algorithm.handle_sample(sample);
        let _ = self.update_limit(|_| new);
        (new != old).then_some(new)
    }

    /// Ends a call started by [`ConcurrencyLimiter::try_acquire`] that was abandoned before
    /// it completed: it leaves the count of calls in flight and is no sample (its RTT is
    /// unknown, and a cancellation says nothing about the limit).
    ///
    /// # Panics
    /// Panics if no call was in flight.
    pub fn cancel(&self) {
        self.end_call();
    }

    /// Takes one call out of the count in flight; the state word before.
    fn end_call(&self) -> u64 {
        let before = self.state.fetch_sub(1, Ordering::AcqRel);
        assert!(
            inflight_of(before) > 0,
            "limiter ended more calls than it admitted"
        );
        before
    }

    /// Replaces the limit by `next(limit)` (retried if another release moved it meanwhile),
    /// keeping the calls in flight; the new limit if it changed.
    fn update_limit(&self, next: impl Fn(u32) -> u32) -> Option<u32> {
        let mut changed = None;
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                let old = limit_of(state);
                let new = next(old);
                changed = (new != old).then_some(new);
                changed.map(|new| u64::from(new) << 32 | (state & INFLIGHT_MASK))
            });
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A closed-loop model of a server with `capacity` concurrent slots and `rtt_ns` service
    /// time; beyond capacity, calls queue and their RTT grows in proportion. Returns the
    /// limit after `seconds`, sampled at 1 ms steps with as many calls as the limit allows.
    fn settle(algorithm: LimitAlgorithm, capacity: u32, seconds: u64) -> u32 {
        let mut limit = AdaptiveLimit::new(LimitConfig::new(algorithm));
        let rtt_ns = 10_000_000u64;
        for step in 0..seconds * 1_000 {
            let inflight = limit.limit();
            let queueing = f64::from(inflight) / f64::from(capacity);
            let rtt = (rtt_ns as f64 * queueing.max(1.0)) as u64;
            let is_dropped = inflight > capacity * 2;
            limit.handle_sample(Sample {
                now_ns: step * 1_000_000,
                rtt_ns: rtt,
                inflight,
                is_dropped,
            });
        }
        limit.limit()
    }

    #[test]
    fn limit_aimd_backs_off_on_drop_and_grows_when_used() {
        let mut limit = AdaptiveLimit::new(LimitConfig::new(LimitAlgorithm::aimd()));
        let ok = Sample {
            now_ns: 0,
            rtt_ns: 1,
            inflight: 20,
            is_dropped: false,
        };
        assert_eq!(limit.handle_sample(ok), 21);
        assert_eq!(
            limit.handle_sample(Sample { inflight: 2, ..ok }),
            21,
            "app-limited"
        );
        assert_eq!(
            limit.handle_sample(Sample {
                is_dropped: true,
                ..ok
            }),
            18
        );
    }

    #[test]
    fn limit_vegas_settles_near_capacity_aimd_below_drop_point() {
        // Ideal limit = capacity (beyond it RTT grows). Target: within ±20% in 5 s.
        let vegas = settle(LimitAlgorithm::vegas(), 100, 5);
        assert!((80..=120).contains(&vegas), "vegas {vegas}");
        // AIMD only reacts to drops (here beyond 2× capacity): it saws between 0.9× and 1×
        // of the drop point, as the algorithm intends.
        let aimd = settle(LimitAlgorithm::aimd(), 100, 5);
        assert!((180..=201).contains(&aimd), "aimd {aimd}");
    }

    #[test]
    fn limit_gradient2_drifts_to_max_under_a_slowly_growing_queue() {
        // Checked against Netflix's Gradient2Limit (tolerance 1.5, smoothing 0.2, long window
        // 600 with a 10-sample warm-up, pull-down ×0.95 when long > 2 × short, queue 4): it has
        // no absolute baseline. When the RTT grows with the limit, the long average follows
        // the short RTT (an exponential average over ~600 samples), so whenever the queue
        // stops growing the gradient is back at 1 (tolerance × long/short ≥ 1) and the limit
        // climbs by smoothing × queue per sample: a queue that is merely sustained becomes the
        // new normal. So it does not settle near capacity in this closed loop, by design;
        // drops do not stop it either (Gradient2 ignores them).
        let gradient2 = settle(LimitAlgorithm::gradient2(), 100, 5);
        assert_eq!(gradient2, 1_000, "gradient2 {gradient2}");
    }

    #[test]
    fn limit_gradient2_shrinks_when_latency_inflates() {
        // Gradient2 judges the present against its own long-term average, so a sustained
        // slow rise becomes the new normal (in a closed loop where RTT grows with the limit
        // it climbs to limit_max; BENCHMARKS.md reports this). What it must do is cut
        // the limit when latency jumps above the long-term average.
        let mut limit = AdaptiveLimit::new(LimitConfig::new(LimitAlgorithm::gradient2()));
        let sample = |rtt_ns, inflight| Sample {
            now_ns: 0,
            rtt_ns,
            inflight,
            is_dropped: false,
        };
        for _ in 0..1_000 {
            let inflight = limit.limit();
            limit.handle_sample(sample(10_000_000, inflight));
        }
        let before = limit.limit();
        for _ in 0..20 {
            let inflight = limit.limit();
            limit.handle_sample(sample(40_000_000, inflight));
        }
        let after = limit.limit();
        assert!(
            f64::from(after) < f64::from(before) * 0.5,
            "{before} -> {after}"
        );
        // Application-limited (few calls in flight): no growth.
        let idle = limit.handle_sample(sample(10_000_000, 1));
        assert_eq!(idle, after);
    }

    #[test]
    fn limiter_refuses_at_limit() {
        let limiter = ConcurrencyLimiter::new(LimitConfig {
            algorithm: LimitAlgorithm::aimd(),
            limit_initial: 2,
            limit_min: 1,
            limit_max: 10,
        });
        assert_eq!(limiter.try_acquire(), Ok(1));
        assert_eq!(limiter.try_acquire(), Ok(2));
        assert_eq!(limiter.try_acquire(), Err(LimitReached { limit: 2 }));
        let changed = limiter.release(Sample {
            now_ns: 0,
            rtt_ns: 1,
            inflight: 2,
            is_dropped: false,
        });
        assert_eq!(changed, Some(3));
        assert_eq!(limiter.inflight(), 1);
    }

    #[test]
    fn limiter_aimd_on_atomic_matches_the_core() {
        let config = LimitConfig::new(LimitAlgorithm::aimd());
        let limiter = ConcurrencyLimiter::new(config);
        let mut core = AdaptiveLimit::new(config);
        let mut rng = colony_base::SplitMix64::new(11);
        for step in 0..5_000u64 {
            let sample = Sample {
                now_ns: step,
                rtt_ns: rng.below(6_000_000_000),
                inflight: rng.below(1_200) as u32,
                is_dropped: rng.below(50) == 0,
            };
            limiter.try_acquire().ok();
            if limiter.inflight() == 0 {
                continue;
            }
            let before = core.limit();
            let after = core.handle_sample(sample);
            let changed = limiter.release(sample);
            assert_eq!(changed, (after != before).then_some(after), "step {step}");
            assert_eq!(limiter.limit(), core.limit(), "step {step}");
        }
    }

    #[test]
    fn limiter_never_admits_over_the_limit_between_threads() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicU32;
        // AIMD that halves on every drop: threads race admissions against limit changes.
        let limiter = Arc::new(ConcurrencyLimiter::new(LimitConfig {
            algorithm: LimitAlgorithm::Aimd {
                backoff_ratio: 0.5,
                timeout_ns: u64::MAX,
            },
            limit_initial: 2,
            limit_min: 1,
            limit_max: 2,
        }));
        let running = Arc::new(AtomicU32::new(0));
        let start = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (limiter, running, start) = (limiter.clone(), running.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut admitted = 0u32;
                    for i in 0..5_000u64 {
                        let Ok(inflight) = limiter.try_acquire() else {
                            continue;
                        };
                        admitted += 1;
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        // The limit was never above 2, whatever it is now; 4 threads race.
                        assert!(
                            now <= 2 && inflight <= 2,
                            "{now} running, {inflight} counted"
                        );
                        // Hold the call across a reschedule, so that calls overlap.
                        std::thread::yield_now();
                        running.fetch_sub(1, Ordering::SeqCst);
                        limiter.release(Sample {
                            now_ns: i,
                            rtt_ns: 1,
                            inflight,
                            is_dropped: (i + t) % 97 == 0,
                        });
                    }
                    admitted
                })
            })
            .collect();
        let admitted: u32 = threads
            .into_iter()
            .map(|t| t.join().expect("no thread panics"))
            .sum();
        assert!(admitted > 0);
        assert_eq!(limiter.inflight(), 0, "every admission was released");
        assert!((1..=2).contains(&limiter.limit()));
    }

    proptest! {
        #[test]
        fn limit_stays_in_bounds(samples in proptest::collection::vec((1u64..1_000_000_000, 0u32..2_000, any::<bool>()), 1..500), which in 0usize..3) {
            let algorithm = [LimitAlgorithm::aimd(), LimitAlgorithm::vegas(), LimitAlgorithm::gradient2()][which];
            let mut limit = AdaptiveLimit::new(LimitConfig::new(algorithm));
            for (i, (rtt_ns, inflight, is_dropped)) in samples.into_iter().enumerate() {
                let l = limit.handle_sample(Sample { now_ns: i as u64, rtt_ns, inflight, is_dropped });
                prop_assert!((1..=1_000).contains(&l));
            }
        }
    }
}
