//! Sampling which calls a caller times (the balancer's RTTs, the hedge's latencies).

/// Which calls a caller times, so that reading the clock at every completion (the second
/// of a call's two readings; ~10 ns of a TSC read on this project's machines) is paid at
/// most once per `gap_ns` per caller. A call is timed when it starts at least `gap_ns`
/// after the last timed one started. With a gap of 1 µs (the balancer's and the hedge's
/// default) this changes nothing until one caller starts calls less than a microsecond
/// apart, and there it still gives an estimate a sample every microsecond against windows
/// and time constants of seconds. Which calls are timed does not depend on their latency,
/// so the samples are not biased by it.
#[derive(Debug, Clone)]
pub struct RttSampler {
    gap_ns: u64,
    /// The earliest start of the next timed call.
    next_ns: u64,
}

impl RttSampler {
    /// A sampler timing at most one call per `gap_ns` (every call if `0`).
    pub fn new(gap_ns: u64) -> Self {
        Self { gap_ns, next_ns: 0 }
    }

    /// A sampler with the same gap that has timed nothing yet (for a new caller).
    pub fn fresh(&self) -> Self {
        Self::new(self.gap_ns)
    }

    /// Whether to time a call starting at `now_ns`.
    pub fn is_timed(&mut self, now_ns: u64) -> bool {
        if now_ns < self.next_ns {
            return false;
        }
        self.next_ns = now_ns.saturating_add(self.gap_ns);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_times_one_call_per_gap() {
        let mut sampler = RttSampler::new(1_000);
        assert!(sampler.is_timed(0), "the first call is timed");
        assert!(!sampler.is_timed(0));
        assert!(
            !sampler.is_timed(999),
            "within the gap of the last timed start"
        );
        assert!(sampler.is_timed(1_000), "a gap after it");
        assert!(!sampler.is_timed(1_500));
        assert!(
            sampler.is_timed(5_000),
            "the gap counts from the last timed call"
        );
        assert!(!sampler.is_timed(5_999));
        assert!(
            sampler.fresh().is_timed(5_999),
            "a new caller times its first call"
        );
        let mut every = RttSampler::new(0);
        assert!(
            (0..5).all(|_| every.is_timed(7)),
            "a gap of 0 times every call"
        );
    }
}
