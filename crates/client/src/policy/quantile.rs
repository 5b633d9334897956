//! Online latency percentiles for hedging: a log-linear histogram (8 sub-buckets per power of
//! two, so a reported value is at most 12.5% above the true one) over a sliding window of two
//! halves. Recording is one atomic add; reading walks ~500 counters, so readers cache the
//! answer ([`LatencyTracker::quantile_ns_cached`]) and recompute it at most once per refresh.

use std::sync::atomic::{AtomicU64, Ordering};

use super::window::TimeWindow;

const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this get one bucket each.
const LINEAR: u64 = 2 * SUB;
/// Buckets needed for any `u64`.
const BUCKETS: usize = (LINEAR + (64 - (SUB_BITS + 1) as u64) * SUB) as usize;

fn bucket_of(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let exponent = 63 - u64::from(value.leading_zeros());
    let sub = (value >> (exponent - u64::from(SUB_BITS))) & (SUB - 1);
    (LINEAR + (exponent - u64::from(SUB_BITS) - 1) * SUB + sub) as usize
}

/// The largest value that falls in `bucket`.
fn bucket_upper(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < LINEAR {
        return bucket;
    }
    let exponent = (bucket - LINEAR) / SUB + u64::from(SUB_BITS) + 1;
    let sub = (bucket - LINEAR) % SUB;
    let low = (1u64 << exponent) + (sub << (exponent - u64::from(SUB_BITS)));
    low.saturating_add((1u64 << (exponent - u64::from(SUB_BITS))) - 1)
}

/// A sliding-window latency histogram; see the module doc.
pub struct LatencyTracker {
    window: TimeWindow<BUCKETS>,
    refresh_ns: u64,
    /// Cached answer: (computed at, value), packed as two words.
    cached_at_ns: AtomicU64,
    cached_value_ns: AtomicU64,
}

impl std::fmt::Debug for LatencyTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyTracker")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl LatencyTracker {
    /// A tracker over the last `window_ns` (two halves), caching quantiles for `refresh_ns`.
    ///
    /// # Panics
    /// Panics if `window_ns` is below 2.
    pub fn new(window_ns: u64, refresh_ns: u64) -> Self {
        assert!(window_ns >= 2, "window too short");
        Self {
            window: TimeWindow::new(2, window_ns / 2),
            refresh_ns,
            cached_at_ns: AtomicU64::new(u64::MAX),
            cached_value_ns: AtomicU64::new(0),
        }
    }

    /// Records one latency.
    pub fn record(&self, now_ns: u64, latency_ns: u64) {
        self.window.add(now_ns, bucket_of(latency_ns), 1);
    }

    /// Samples in the window.
    pub fn count(&self, now_ns: u64) -> u64 {
        self.window.sums(now_ns).iter().sum()
    }

    /// The `q` quantile (0 ≤ q ≤ 1) of the window, or `None` with fewer than `samples_min`
    /// samples. Rounded up to its bucket's upper edge.
    pub fn quantile_ns(&self, now_ns: u64, q: f64, samples_min: u64) -> Option<u64> {
        assert!((0.0..=1.0).contains(&q), "quantile out of range: {q}");
        let counts = self.window.sums(now_ns);
        let total: u64 = counts.iter().sum();
        if total == 0 || total < samples_min {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bucket_upper(bucket));
            }
        }
        unreachable!("rank {rank} within total {total}")
    }

    /// Like [`LatencyTracker::quantile_ns`] but recomputed at most once per `refresh_ns`.
    pub fn quantile_ns_cached(&self, now_ns: u64, q: f64, samples_min: u64) -> Option<u64> {
        let at = self.cached_at_ns.load(Ordering::Acquire);
        if at != u64::MAX && now_ns.saturating_sub(at) < self.refresh_ns {
            let value = self.cached_value_ns.load(Ordering::Acquire);
            return (value != 0).then_some(value);
        }
        let value = self.quantile_ns(now_ns, q, samples_min);
        self.cached_value_ns
            .store(value.unwrap_or(0), Ordering::Release);
        self.cached_at_ns.store(now_ns, Ordering::Release);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quantile_of_uniform_latencies() {
        let tracker = LatencyTracker::new(1_000_000_000, 0);
        for i in 1..=1_000u64 {
            tracker.record(10, i * 1_000);
        }
        let p50 = tracker.quantile_ns(10, 0.5, 1).expect("enough samples");
        let p99 = tracker.quantile_ns(10, 0.99, 1).expect("enough samples");
        assert!((500_000..=562_500).contains(&p50), "p50 {p50}");
        assert!((990_000..=1_113_750).contains(&p99), "p99 {p99}");
        assert_eq!(tracker.quantile_ns(10, 0.5, 5_000), None);
        // Past the window, nothing is left.
        assert_eq!(tracker.quantile_ns(2_000_000_000, 0.5, 1), None);
    }

    proptest! {
        #[test]
        fn quantile_bucket_bounds_hold(value: u64) {
            let bucket = bucket_of(value);
            prop_assert!(bucket < BUCKETS);
            let upper = bucket_upper(bucket);
            prop_assert!(upper >= value);
            // Relative error at most 1/8 of the value (above the linear range).
            prop_assert!(upper - value <= value / 8 + 1);
            if bucket > 0 {
                prop_assert!(bucket_upper(bucket - 1) < value);
            }
        }
    }
}
