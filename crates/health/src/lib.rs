//! Health-check rules, as a pure core: how a probe's result becomes a check status (with
//! Consul's `SuccessBeforePassing` / `FailuresBeforeCritical` flap damping), when a check has
//! been critical long enough to deregister its service, and when the next probe runs.
//!
//! What it is not: it runs no probe. The runtime's check runners do HTTP/TCP/TTL work and feed
//! each result here with the time it was observed.
//!
//! Driving it:
//! 1. Create a [`CheckTracker`] per check with its [`DampingRule`] and the stored status.
//! 2. Schedule the first probe after [`first_run_delay_ms`], later ones after
//!    [`next_run_delay_ms`] (both jittered so that checks never synchronise).
//! 3. Feed each probe result to [`CheckTracker::handle_result`]; a `Some(status)` answer is a
//!    status change to record in the catalog.
//! 4. Ask [`CheckTracker::should_deregister`] to apply `DeregisterCriticalServiceAfter`.
#![deny(missing_docs, unreachable_pub)]

pub use colony_base::HealthStatus;
use colony_base::SplitMix64;

/// Consecutive-result thresholds that damp flapping (Consul's check options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DampingRule {
    /// Consecutive passing/warning results needed before the status changes to them.
    pub success_before_passing: u32,
    /// Consecutive critical results needed before the status changes to critical.
    pub failures_before_critical: u32,
}

/// The status of one check and the counters behind it.
#[derive(Debug, Clone)]
pub struct CheckTracker {
    rule: DampingRule,
    status: HealthStatus,
    successes_count: u32,
    failures_count: u32,
    critical_since_ms: Option<u64>,
    observed_ms: u64,
}

impl CheckTracker {
    /// A tracker starting from `status`, as stored in the catalog, observed at `now_ms`.
    pub fn new(rule: DampingRule, status: HealthStatus, now_ms: u64) -> Self {
        CheckTracker {
            rule,
            status,
            successes_count: 0,
            failures_count: 0,
            critical_since_ms: (status == HealthStatus::Critical).then_some(now_ms),
            observed_ms: now_ms,
        }
    }

    /// The current (damped) status.
    pub fn status(&self) -> HealthStatus {
        self.status
    }

    /// When the last probe result arrived.
    pub fn observed_ms(&self) -> u64 {
        self.observed_ms
    }

    /// Feeds one probe result. Returns the new status when it changed.
    ///
    /// Passing and warning results count as successes, critical ones as failures; a status
    /// changes only once its side has reached its threshold of consecutive results.
    pub fn handle_result(&mut self, now_ms: u64, result: HealthStatus) -> Option<HealthStatus> {
        self.observed_ms = now_ms;
        let threshold_reached = if result == HealthStatus::Critical {
            self.failures_count = self.failures_count.saturating_add(1);
            self.successes_count = 0;
            self.failures_count >= self.rule.failures_before_critical
        } else {
            self.successes_count = self.successes_count.saturating_add(1);
            self.failures_count = 0;
            self.successes_count >= self.rule.success_before_passing
        };
        if !threshold_reached {
            return None;
        }
        self.set_status(now_ms, result)
    }

    /// Sets the status directly (a TTL check's pass/warn/fail, or its expiry): no damping, as
    /// the caller states the status rather than reporting a probe.
    pub fn handle_explicit(&mut self, now_ms: u64, status: HealthStatus) -> Option<HealthStatus> {
        self.observed_ms = now_ms;
        self.successes_count = 0;
        self.failures_count = 0;
        self.set_status(now_ms, status)
    }

    fn set_status(&mut self, now_ms: u64, status: HealthStatus) -> Option<HealthStatus> {
        let changed = status != self.status;
        self.status = status;
        if status == HealthStatus::Critical {
            self.critical_since_ms.get_or_insert(now_ms);
        } else {
            self.critical_since_ms = None;
        }
        assert_eq!(
            self.critical_since_ms.is_some(),
            self.status == HealthStatus::Critical
        );
        changed.then_some(status)
    }

    /// Whether the check has been critical for at least `after_ms` (Consul's
    /// `DeregisterCriticalServiceAfter`).
    pub fn should_deregister(&self, now_ms: u64, after_ms: u64) -> bool {
        self.deregister_in_ms(now_ms, after_ms) == Some(0)
    }

    /// How long until the check will have been critical for `after_ms`: `Some(0)` if already,
    /// `None` while it is not critical.
    pub fn deregister_in_ms(&self, now_ms: u64, after_ms: u64) -> Option<u64> {
        let since = self.critical_since_ms?;
        Some((since + after_ms).saturating_sub(now_ms))
    }
}

/// Classifies an HTTP check's response code as Consul does: 2xx passing, 429 warning,
/// anything else critical.
pub fn classify_http_status(code: u16) -> HealthStatus {
    match code {
        200..=299 => HealthStatus::Passing,
        429 => HealthStatus::Warning,
        _ => HealthStatus::Critical,
    }
}

/// Delay before a check's first probe: uniform in `[0, interval)`, so that checks registered
/// together (or restored together after a restart) spread over the interval.
pub fn first_run_delay_ms(interval_ms: u64, rng: &mut SplitMix64) -> u64 {
    if interval_ms == 0 {
        return 0;
    }
    let delay = rng.below(interval_ms);
    assert!(delay < interval_ms);
    delay
}

/// Delay between probes: the interval with ±5% jitter, so that phases drift apart rather than
/// lock together.
pub fn next_run_delay_ms(interval_ms: u64, rng: &mut SplitMix64) -> u64 {
    let spread = interval_ms / 10;
    if spread == 0 {
        return interval_ms.max(1);
    }
    let delay = interval_ms - spread / 2 + rng.below(spread + 1);
    assert!(delay >= interval_ms - spread / 2 && delay <= interval_ms + spread / 2 + 1);
    delay.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthStatus::{Critical, Passing, Warning};

    #[test]
    fn tracker_without_damping_follows_every_result() {
        let mut tracker = CheckTracker::new(DampingRule::default(), Critical, 0);
        assert_eq!(tracker.handle_result(1, Passing), Some(Passing));
        assert_eq!(tracker.handle_result(2, Passing), None);
        assert_eq!(tracker.handle_result(3, Warning), Some(Warning));
        assert_eq!(tracker.handle_result(4, Critical), Some(Critical));
    }

    #[test]
    fn tracker_success_before_passing_needs_consecutive_successes() {
        let rule = DampingRule {
            success_before_passing: 3,
            failures_before_critical: 0,
        };
        let mut tracker = CheckTracker::new(rule, Critical, 0);
        assert_eq!(tracker.handle_result(1, Passing), None);
        assert_eq!(tracker.handle_result(2, Passing), None);
        assert_eq!(tracker.handle_result(3, Critical), None, "already critical");
        assert_eq!(tracker.handle_result(4, Passing), None, "counter was reset");
        assert_eq!(tracker.handle_result(5, Passing), None);
        assert_eq!(tracker.handle_result(6, Passing), Some(Passing));
    }

    #[test]
    fn tracker_failures_before_critical_damps_single_failures() {
        let rule = DampingRule {
            success_before_passing: 0,
            failures_before_critical: 2,
        };
        let mut tracker = CheckTracker::new(rule, Passing, 0);
        assert_eq!(tracker.handle_result(1, Critical), None);
        assert_eq!(tracker.handle_result(2, Passing), None);
        assert_eq!(tracker.handle_result(3, Critical), None);
        assert_eq!(tracker.handle_result(4, Critical), Some(Critical));
    }

    #[test]
    fn tracker_deregister_after_counts_from_first_critical() {
        let mut tracker = CheckTracker::new(DampingRule::default(), Passing, 0);
        tracker.handle_result(1_000, Critical);
        tracker.handle_result(2_000, Critical);
        assert!(!tracker.should_deregister(2_999, 2_000));
        assert!(tracker.should_deregister(3_000, 2_000));
        assert_eq!(tracker.deregister_in_ms(2_500, 2_000), Some(500));
        tracker.handle_result(3_500, Passing);
        assert!(!tracker.should_deregister(10_000, 2_000));
        assert_eq!(tracker.deregister_in_ms(10_000, 2_000), None);
    }

    #[test]
    fn classify_http_status_matches_consul() {
        assert_eq!(classify_http_status(200), Passing);
        assert_eq!(classify_http_status(204), Passing);
        assert_eq!(classify_http_status(429), Warning);
        assert_eq!(classify_http_status(301), Critical);
        assert_eq!(classify_http_status(503), Critical);
    }

    proptest::proptest! {
        #[test]
        fn run_delays_stay_within_jitter_bounds(interval in 1u64..1_000_000, seed: u64) {
            let mut rng = SplitMix64::new(seed);
            proptest::prop_assert!(first_run_delay_ms(interval, &mut rng) < interval);
            let next = next_run_delay_ms(interval, &mut rng);
            proptest::prop_assert!(next * 20 >= interval * 19 - 20);
            proptest::prop_assert!(next * 20 <= interval * 21 + 20);
        }
    }
}
