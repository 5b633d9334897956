//! Retry budget (Finagle's `RetryBudget`, tower's `TpsBudget`): retries and hedges together may
//! add at most `ratio` of the logical requests over a sliding window, plus a small reserve
//! (`retries_min_per_s`) so a quiet client can still retry. One budget is meant to be shared by
//! the retry and hedge layers of a client, so that their extra load adds up to one bound.
//!
//! Lock-free (time-bucketed atomic counters). The bound is exact for a single thread; with
//! concurrent withdrawals it may be overdrawn by the number of racing callers.

use super::window::TimeWindow;

const DEPOSITS: usize = 0;
const WITHDRAWALS: usize = 1;

/// Budget parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Extra attempts allowed per logical request (0.1 = 10% extra load).
    pub ratio: f64,
    /// Extra attempts always allowed per second, whatever the traffic.
    pub retries_min_per_s: f64,
    /// Length of the sliding window.
    pub window_ns: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.1,
            retries_min_per_s: 10.0,
            window_ns: 10_000_000_000,
        }
    }
}

/// The retry budget; see the module doc.
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    reserve: f64,
    window: TimeWindow<2>,
}

/// Buckets per window.
const BUCKETS: u32 = 10;

impl RetryBudget {
    /// A budget with nothing deposited.
    ///
    /// # Panics
    /// Panics if `ratio` or `retries_min_per_s` is negative or not finite, or the window is
    /// shorter than 10 ns.
    pub fn new(config: BudgetConfig) -> Self {
        assert!(
            config.ratio.is_finite() && config.ratio >= 0.0,
            "ratio must be >= 0"
        );
        assert!(
            config.retries_min_per_s.is_finite() && config.retries_min_per_s >= 0.0,
            "retries_min_per_s must be >= 0"
        );
        assert!(config.window_ns >= u64::from(BUCKETS), "window too short");
        let bucket_ns = config.window_ns / u64::from(BUCKETS);
        let window = TimeWindow::new(BUCKETS, bucket_ns);
        let reserve = config.retries_min_per_s * window.span_ns() as f64 / 1e9;
        Self {
            config,
            reserve,
            window,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// The window's actual length (bucket lengths round up to a power of two nanoseconds).
    pub fn span_ns(&self) -> u64 {
        self.window.span_ns()
    }

    /// Records one logical request (not a retry, not a hedge).
    #[inline]
    pub fn deposit(&self, now_ns: u64) {
        self.window.add(now_ns, DEPOSITS, 1);
    }

    /// Extra attempts still allowed in the window at `now_ns`.
    pub fn balance(&self, now_ns: u64) -> f64 {
        let [deposits, withdrawals] = self.window.sums(now_ns);
        self.reserve + self.config.ratio * deposits as f64 - withdrawals as f64
    }

    /// Takes one extra attempt (a retry or a hedge) from the budget if it allows one.
    pub fn try_withdraw(&self, now_ns: u64) -> bool {
        if self.balance(now_ns) < 1.0 {
            return false;
        }
        self.window.add(now_ns, WITHDRAWALS, 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn budget_allows_ratio_of_requests() {
        let budget = RetryBudget::new(BudgetConfig {
            ratio: 0.2,
            retries_min_per_s: 0.0,
            window_ns: 1_000,
        });
        for _ in 0..50 {
            budget.deposit(5);
        }
        let granted = (0..50).filter(|_| budget.try_withdraw(5)).count();
        assert_eq!(granted, 10);
        // After the window passes, the deposits are gone and so is the allowance.
        assert!(!budget.try_withdraw(2_000));
    }

    proptest! {
        /// Whatever the interleaving, withdrawals never exceed ratio × deposits plus the
        /// reserve of every window the run spans.
        #[test]
        fn budget_never_exceeded(ops in proptest::collection::vec((any::<bool>(), 0u64..50), 1..2_000)) {
            let config = BudgetConfig { ratio: 0.1, retries_min_per_s: 100.0, window_ns: 100_000_000 };
            let budget = RetryBudget::new(config);
            let mut now = 0u64;
            let (mut deposits, mut withdrawals) = (0u64, 0u64);
            for (is_request, step_ms) in ops {
                now += step_ms * 1_000_000 / 10;
                if is_request {
                    budget.deposit(now);
                    deposits += 1;
                } else if budget.try_withdraw(now) {
                    withdrawals += 1;
                }
            }
            // Reserve: 100/s × the window; a run of `now` ns spans at most now/window + 1
            // windows.
            let span = budget.span_ns();
            let windows = now / span + 1;
            let bound = 0.1 * deposits as f64 + 100.0 * span as f64 / 1e9 * windows as f64;
            prop_assert!(withdrawals as f64 <= bound, "{} > {}", withdrawals, bound);
        }
    }
}
