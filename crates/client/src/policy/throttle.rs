//! Client-side adaptive throttling (Google SRE book, "Handling Overload"): each client tracks,
//! over a sliding window, the requests it attempted and the requests the backend accepted, and
//! rejects locally with probability `max(0, (requests − K·accepts) / (requests + 1))`. With
//! `K = 2` the backend sees at most about twice the load it can accept, so the rejections it
//! must answer cost little. Lock-free; the random draw is an input.

use super::window::TimeWindow;

const REQUESTS: usize = 0;
const ACCEPTS: usize = 1;

/// Throttle parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleConfig {
    /// The multiplier `K` (the SRE book suggests 2; lower is more aggressive).
    pub k: f64,
    /// Length of the sliding window (the SRE book uses two minutes).
    pub window_ns: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            k: 2.0,
            window_ns: 120_000_000_000,
        }
    }
}

/// Calls after which a [`ProbabilityCache`] is recomputed.
pub const PROBABILITY_REFRESH_CALLS: u32 = 16;
/// Time after which a [`ProbabilityCache`] is recomputed.
pub const PROBABILITY_REFRESH_NS: u64 = 1_000_000;

/// One caller's copy of the reject probability (see [`Throttle::admit_cached`]).
#[derive(Debug, Clone, Default)]
pub struct ProbabilityCache {
    p: f64,
    /// Calls left before a recomputation (0: compute on the next call).
    calls_left: u32,
    /// When it must be recomputed at the latest.
    until_ns: u64,
}

/// The throttle; see the module doc.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    window: TimeWindow<2>,
}

impl Throttle {
    /// A throttle with an empty history.
    ///
    /// # Panics
    /// Panics if `k` is below 1 or not finite, or the window is shorter than 20 ns.
    pub fn new(config: ThrottleConfig) -> Self {
        assert!(config.k.is_finite() && config.k >= 1.0, "k must be >= 1");
        assert!(config.window_ns >= 20, "window too short");
        Self {
            config,
            window: TimeWindow::new(20, config.window_ns / 20),
        }
    }

    /// The probability of rejecting a request at `now_ns`.
    pub fn reject_probability(&self, now_ns: u64) -> f64 {
        let [requests, accepts] = self.window.sums(now_ns);
        let requests = requests as f64;
        let p = (requests - self.config.k * accepts as f64) / (requests + 1.0);
        p.clamp(0.0, 1.0)
    }

    /// Decides one request at `now_ns` with 64 random bits; the request is counted either way.
    /// Returns `true` to send it, `false` to reject it locally.
    pub fn admit(&self, now_ns: u64, random: u64) -> bool {
        // A fresh cache computes the probability now.
        self.admit_cached(&mut ProbabilityCache::default(), now_ns, random)
    }

    /// [`Throttle::admit`] for a caller that keeps its own copy of the reject probability in
    /// `cache`, recomputed on the caller's first call, then after every
    /// [`PROBABILITY_REFRESH_CALLS`] of its calls or [`PROBABILITY_REFRESH_NS`], whichever comes
    /// first: summing the window (its 32 slots) on every call would cost more than the rest
    /// of a call, and a probability over a window of minutes moves little in a millisecond.
    pub fn admit_cached(&self, cache: &mut ProbabilityCache, now_ns: u64, random: u64) -> bool {
        if cache.calls_left == 0 || now_ns >= cache.until_ns {
            cache.p = self.reject_probability(now_ns);
            cache.calls_left = PROBABILITY_REFRESH_CALLS;
            cache.until_ns = now_ns.saturating_add(PROBABILITY_REFRESH_NS);
        }
        cache.calls_left -= 1;
        self.window.add(now_ns, REQUESTS, 1);
        // 53 random bits make a draw in [0, 1), so `p == 0` admits without one.
        cache.p == 0.0 || (random >> 11) as f64 / (1u64 << 53) as f64 >= cache.p
    }

    /// Records that the backend accepted a request (answered it, even with an application
    /// error — only overload rejections and timeouts are not accepts) that was counted at
    /// `requested_ns` (its `admit` time). The accept goes in its request's bucket, so the
    /// window pairs each accept with its request, and none is lost for a call that outlived
    /// its bucket yet is still in the window; one older than the window is dropped with its
    /// request. It also spares the caller a second clock read per call.
    pub fn on_accepted(&self, requested_ns: u64) {
        self.window.add(requested_ns, ACCEPTS, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_base::SplitMix64;

    #[test]
    fn throttle_admits_everything_while_accepted() {
        let throttle = Throttle::new(ThrottleConfig::default());
        let mut rng = SplitMix64::new(3);
        for i in 0..1_000 {
            assert!(throttle.admit(i, rng.next_u64()));
            throttle.on_accepted(i);
        }
        assert_eq!(throttle.reject_probability(1_000), 0.0);
    }

    #[test]
    fn throttle_cached_probability_is_recomputed_by_calls_and_by_time() {
        let throttle = Throttle::new(ThrottleConfig {
            k: 2.0,
            window_ns: 1_000_000_000,
        });
        // 300 requests and no accept: p = 300/301.
        for i in 0..300 {
            throttle.admit(i, 0);
        }
        let mut cache = ProbabilityCache::default();
        let always_admit = u64::MAX; // the highest draw: rejected only when p is 1
        assert!(
            throttle.admit_cached(&mut cache, 300, always_admit),
            "first call computes p < 1"
        );
        assert!((cache.p - 300.0 / 301.0).abs() < 1e-12);
        // The backend now accepts a flood: the cached p holds for 15 more calls…
        for _ in 0..10_000 {
            throttle.on_accepted(301);
        }
        let lowest = 0; // the lowest draw: admitted only when p is 0
        for call in 1..PROBABILITY_REFRESH_CALLS {
            assert!(
                !throttle.admit_cached(&mut cache, 301, lowest),
                "call {call} uses the cached p"
            );
        }
        // …then the 17th call recomputes it (p = 0 now) and admits.
        assert!(throttle.admit_cached(&mut cache, 301, lowest));
        assert_eq!(cache.p, 0.0);
        // By time: a fresh p after PROBABILITY_REFRESH_NS, even with calls left.
        for i in 0..100_000 {
            throttle.admit(302 + i, 0);
        }
        assert!(
            throttle.admit_cached(&mut cache, 400_000, lowest),
            "cached p = 0"
        );
        let later = 302 + PROBABILITY_REFRESH_NS;
        assert!(
            !throttle.admit_cached(&mut cache, later, lowest),
            "recomputed after the refresh time"
        );
        assert!(cache.p > 0.0);
    }

    #[test]
    fn throttle_accept_is_counted_with_its_request() {
        // A window of 1 s in 20 buckets of 50 ms (rounded up to 2^26 ns ≈ 67 ms).
        let throttle = Throttle::new(ThrottleConfig {
            k: 1.0,
            window_ns: 1_000_000_000,
        });
        for _ in 0..10 {
            assert!(throttle.admit(0, u64::MAX));
        }
        // Answered 0.5 s later, in a later bucket: counted where the requests were, so the
        // two stay paired in the window and leave it together (the window spans 20 × 2^26 ns
        // ≈ 1.34 s).
        for _ in 0..10 {
            throttle.on_accepted(0);
        }
        assert_eq!(throttle.window.sums(500_000_000), [10, 10]);
        assert_eq!(throttle.reject_probability(500_000_000), 0.0);
        assert_eq!(throttle.window.sums(1_400_000_000), [0, 0]);
        // A request whose bucket has been reused (it left the window long ago) is dropped.
        let slots_span = 32 << 26;
        throttle.admit(slots_span, u64::MAX);
        throttle.on_accepted(0);
        assert_eq!(throttle.window.sums(slots_span), [1, 0]);
    }

    #[test]
    fn throttle_sends_about_k_times_accepts_when_backend_refuses() {
        // The backend accepts 100 of the first requests and then nothing: the client keeps
        // sending until requests ≈ K·accepts, then rejects almost everything locally.
        let throttle = Throttle::new(ThrottleConfig {
            k: 2.0,
            window_ns: 1_000_000_000,
        });
        let mut rng = SplitMix64::new(4);
        let mut sent = 0;
        for i in 0..10_000u64 {
            if throttle.admit(i, rng.next_u64()) {
                sent += 1;
                if sent <= 100 {
                    throttle.on_accepted(i);
                }
            }
        }
        // Requests count local rejections too: past R = 200 each is sent with probability
        // 201/(R + 1), so about 200 + 201·ln(10000/200) ≈ 990 are sent in all — a tenth of
        // the 10,000 a naive client would send.
        assert!((850..1_150).contains(&sent), "sent {sent}");
        let p = throttle.reject_probability(10_000);
        assert!((0.97..1.0).contains(&p), "p {p}");
    }
}
