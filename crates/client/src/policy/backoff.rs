//! Exponential backoff with jitter (the three variants of "Exponential Backoff And Jitter",
//! AWS Architecture Blog, 2015): full, equal and decorrelated. Pure: the random bits come from
//! the caller's [`SplitMix64`].

use colony_base::SplitMix64;

/// How the delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Jitter {
    /// No jitter: `min(cap, base·2^attempt)`.
    None,
    /// Uniform in `[0, min(cap, base·2^attempt)]`.
    Full,
    /// Half fixed, half uniform: `t/2 + U[0, t/2]` with `t = min(cap, base·2^attempt)`.
    Equal,
    /// `min(cap, U[base, 3·previous])`; each delay depends on the last one.
    Decorrelated,
}

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay's scale.
    pub base_ns: u64,
    /// No delay exceeds this.
    pub cap_ns: u64,
    /// The randomisation.
    pub jitter: Jitter,
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first retry). `previous_ns` is the
    /// delay used before the previous retry (`base_ns` for the first), needed by
    /// [`Jitter::Decorrelated`].
    ///
    /// # Panics
    /// Panics if `base_ns` is 0 or above `cap_ns`.
    pub fn delay_ns(&self, attempt: u32, previous_ns: u64, rng: &mut SplitMix64) -> u64 {
        assert!(
            self.base_ns > 0 && self.base_ns <= self.cap_ns,
            "need 0 < base <= cap"
        );
        let exponential = self
            .base_ns
            .saturating_mul(1u64 << attempt.min(62))
            .min(self.cap_ns);
        let delay = match self.jitter {
            Jitter::None => exponential,
            Jitter::Full => uniform(rng, 0, exponential),
            Jitter::Equal => exponential / 2 + uniform(rng, 0, exponential - exponential / 2),
            Jitter::Decorrelated => {
                let high = previous_ns.max(self.base_ns).saturating_mul(3);
                uniform(rng, self.base_ns, high).min(self.cap_ns)
            }
        };
        assert!(delay <= self.cap_ns);
        delay
    }
}

/// Uniform in `[low, high]` inclusive.
fn uniform(rng: &mut SplitMix64, low: u64, high: u64) -> u64 {
    debug_assert!(low <= high);
    let span = high - low;
    if span == u64::MAX {
        rng.next_u64()
    } else {
        low + rng.below(span + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backoff(jitter: Jitter) -> Backoff {
        Backoff {
            base_ns: 10,
            cap_ns: 1_000,
            jitter,
        }
    }

    #[test]
    fn backoff_none_doubles_then_caps() {
        let mut rng = SplitMix64::new(1);
        let delays: Vec<u64> = (0..9)
            .map(|a| backoff(Jitter::None).delay_ns(a, 0, &mut rng))
            .collect();
        assert_eq!(delays, vec![10, 20, 40, 80, 160, 320, 640, 1_000, 1_000]);
    }

    #[test]
    fn backoff_full_jitter_spreads_over_the_range() {
        let mut rng = SplitMix64::new(2);
        let delays: Vec<u64> = (0..10_000)
            .map(|_| backoff(Jitter::Full).delay_ns(6, 0, &mut rng))
            .collect();
        let mean = delays.iter().sum::<u64>() as f64 / delays.len() as f64;
        // Uniform on [0, 640]: mean 320.
        assert!((mean - 320.0).abs() < 10.0, "mean {mean}");
        assert!(delays.iter().any(|d| *d < 64) && delays.iter().any(|d| *d > 576));
    }

    proptest! {
        #[test]
        fn backoff_jitter_stays_in_bounds(seed: u64, attempt in 0u32..80, previous in 0u64..5_000) {
            let mut rng = SplitMix64::new(seed);
            let t = 10u64.saturating_mul(1u64 << attempt.min(62)).min(1_000);
            let full = backoff(Jitter::Full).delay_ns(attempt, previous, &mut rng);
            prop_assert!(full <= t);
            let equal = backoff(Jitter::Equal).delay_ns(attempt, previous, &mut rng);
            prop_assert!(equal >= t / 2 && equal <= t);
            let decorrelated = backoff(Jitter::Decorrelated).delay_ns(attempt, previous, &mut rng);
            prop_assert!((10..=1_000).contains(&decorrelated));
            prop_assert!(decorrelated <= previous.max(10) * 3);
        }
    }
}
