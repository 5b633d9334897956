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
        let p = self.reject_probability(now_ns);
        self.window.add(now_ns, REQUESTS, 1);
        let draw = (random >> 11) as f64 / (1u64 << 53) as f64;
        draw >= p
    }

    /// Records that the backend accepted a request (answered it, even with an application
    /// error — only overload rejections and timeouts are not accepts).
    pub fn on_accepted(&self, now_ns: u64) {
        self.window.add(now_ns, ACCEPTS, 1);
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
