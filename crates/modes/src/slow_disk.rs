//! Slow-disk detection for replicated servers: this server's fsync latency against its
//! peers'.
//!
//! A leader whose disk is much slower than its followers' holds every write back (an entry
//! commits only once the leader has it on disk too), so it should hand leadership to a
//! follower and report its storage as Degraded. Each server keeps a [`LatencyWindow`] of its
//! own fsync latencies, learns its peers' [`LatencySummary`]s, and feeds them all to a
//! [`SlowDiskDetector`] about once a second; the detector answers with the [`Signal`] for the
//! storage mode machine and, on a leader that has been slow for long enough, the peer to
//! transfer leadership to.
//!
//! Pure: time is an input, nothing is measured here.

use std::collections::VecDeque;

use crate::Signal;

/// Recent fsync latencies of one server: at most `max_samples`, none older than
/// `max_age_ms`.
#[derive(Debug, Clone)]
pub struct LatencyWindow {
    samples: VecDeque<(u64, u64)>,
    max_samples: usize,
    max_age_ms: u64,
}

/// What a server says about its disk: how many samples its window holds, and their p99.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencySummary {
    /// Samples in the window.
    pub samples: u32,
    /// The 99th percentile of those samples, in microseconds (0 without samples).
    pub p99_us: u64,
}

impl LatencyWindow {
    /// An empty window.
    ///
    /// # Panics
    /// Panics if `max_samples` is zero.
    pub fn new(max_samples: usize, max_age_ms: u64) -> Self {
        assert!(max_samples > 0, "a latency window needs room for a sample");
        LatencyWindow {
            samples: VecDeque::with_capacity(max_samples),
            max_samples,
            max_age_ms,
        }
    }

    /// Records one fsync that took `latency_us`, finished at `now_ms`.
    pub fn record(&mut self, now_ms: u64, latency_us: u64) {
        if self.samples.len() == self.max_samples {
            self.samples.pop_front();
        }
        self.samples.push_back((now_ms, latency_us));
    }

    /// Drops samples older than the window's age, then summarises the rest.
    pub fn summary(&mut self, now_ms: u64) -> LatencySummary {
        let oldest = now_ms.saturating_sub(self.max_age_ms);
        while self.samples.front().is_some_and(|&(at, _)| at < oldest) {
            self.samples.pop_front();
        }
        let mut latencies: Vec<u64> = self.samples.iter().map(|&(_, us)| us).collect();
        latencies.sort_unstable();
        LatencySummary {
            samples: latencies.len() as u32,
            p99_us: percentile(&latencies, 0.99),
        }
    }
}

/// The value at rank `q` of sorted `values` (nearest rank; 0 when empty).
fn percentile(values: &[u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let rank = ((values.len() as f64) * q).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// When a disk counts as slow, and how soon a leader acts on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowDiskPolicy {
    /// Slow when this server's p99 is at least this many times the peers' median p99.
    pub factor: f64,
    /// ... and at least this much above it (microseconds), so that noise never counts: a
    /// p99 over a few hundred samples jumps by several milliseconds on a busy disk.
    pub min_gap_us: u64,
    /// Summaries with fewer samples are not evidence.
    pub min_samples: u32,
    /// Slowness counts (storage Impaired, a leader transfers) only once it has lasted this
    /// long without a break.
    pub sustain_ms: u64,
    /// At most one transfer per this interval from one server.
    pub cooldown_ms: u64,
}

impl Default for SlowDiskPolicy {
    fn default() -> Self {
        SlowDiskPolicy {
            factor: 3.0,
            min_gap_us: 20_000,
            min_samples: 20,
            sustain_ms: 3_000,
            cooldown_ms: 30_000,
        }
    }
}

/// What the detector concluded from one round of evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskVerdict {
    /// The signal for the storage mode machine; `None` when there is too little evidence
    /// (an idle server, no peer with enough samples, slowness not sustained yet) to say
    /// either way.
    pub signal: Option<Signal>,
    /// On a leader slow for long enough: the peer (by id) with the fastest disk.
    pub transfer_to: Option<u64>,
    /// This server's p99 and the peers' median p99, in microseconds, when both are known.
    pub compared: Option<(u64, u64)>,
}

/// Compares this server's disk with its peers' over time.
#[derive(Debug, Clone)]
pub struct SlowDiskDetector {
    policy: SlowDiskPolicy,
    slow_since_ms: Option<u64>,
    last_transfer_ms: Option<u64>,
}

impl SlowDiskDetector {
    /// A detector that has seen nothing yet.
    pub fn new(policy: SlowDiskPolicy) -> Self {
        SlowDiskDetector {
            policy,
            slow_since_ms: None,
            last_transfer_ms: None,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &SlowDiskPolicy {
        &self.policy
    }

    /// One round: this server's summary, its peers' (by id), and whether it leads.
    pub fn evaluate(
        &mut self,
        now_ms: u64,
        own: LatencySummary,
        peers: &[(u64, LatencySummary)],
        is_leader: bool,
    ) -> DiskVerdict {
        let min_samples = self.policy.min_samples;
        let mut usable: Vec<(u64, u64)> = peers
            .iter()
            .filter(|(_, summary)| summary.samples >= min_samples)
            .map(|&(id, summary)| (id, summary.p99_us))
            .collect();
        if own.samples < min_samples || usable.is_empty() {
            self.slow_since_ms = None;
            return DiskVerdict {
                signal: None,
                transfer_to: None,
                compared: None,
            };
        }
        let mut p99s: Vec<u64> = usable.iter().map(|&(_, p99)| p99).collect();
        p99s.sort_unstable();
        let median = p99s[(p99s.len() - 1) / 2];
        let slow = own.p99_us as f64 >= self.policy.factor * median as f64
            && own.p99_us >= median.saturating_add(self.policy.min_gap_us);
        let compared = Some((own.p99_us, median));
        if !slow {
            self.slow_since_ms = None;
            return DiskVerdict {
                signal: Some(Signal::Healthy),
                transfer_to: None,
                compared,
            };
        }
        let since = *self.slow_since_ms.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) < self.policy.sustain_ms {
            return DiskVerdict {
                signal: None,
                transfer_to: None,
                compared,
            };
        }
        let cooled = self
            .last_transfer_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= self.policy.cooldown_ms);
        let mut transfer_to = None;
        if is_leader && cooled {
            // The fastest disk; ties go to the lowest id, so the choice is deterministic.
            usable.sort_unstable_by_key(|&(id, p99)| (p99, id));
            transfer_to = usable.first().map(|&(id, _)| id);
            self.last_transfer_ms = Some(now_ms);
        }
        DiskVerdict {
            signal: Some(Signal::Impaired),
            transfer_to,
            compared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(samples: u32, p99_ms: u64) -> LatencySummary {
        LatencySummary {
            samples,
            p99_us: p99_ms * 1_000,
        }
    }

    #[test]
    fn window_keeps_the_newest_samples_within_its_age() {
        let mut window = LatencyWindow::new(4, 1_000);
        for (at, us) in [(0, 900), (10, 100), (20, 200), (30, 300), (40, 400)] {
            window.record(at, us);
        }
        // The first sample fell out by count: 100..400 remain.
        assert_eq!(
            window.summary(40),
            LatencySummary {
                samples: 4,
                p99_us: 400
            }
        );
        // By age: at 1_025 only samples at or after 25 remain.
        assert_eq!(
            window.summary(1_025),
            LatencySummary {
                samples: 2,
                p99_us: 400
            }
        );
        assert_eq!(window.summary(5_000), LatencySummary::default());
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        let values: Vec<u64> = (1..=200).collect();
        assert_eq!(percentile(&values, 0.99), 198);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.99), 0);
    }

    #[test]
    fn verdicts_by_table() {
        let policy = SlowDiskPolicy::default();
        // (own, peers, expected signal)
        type Case = (LatencySummary, Vec<(u64, LatencySummary)>, Option<Signal>);
        let cases: Vec<Case> = vec![
            // Too few own samples: no verdict.
            (summary(5, 100), vec![(2, summary(50, 1))], None),
            // No peer with enough samples: no verdict.
            (summary(50, 100), vec![(2, summary(3, 1))], None),
            // 100 ms against 1 ms: slow.
            (
                summary(50, 100),
                vec![(2, summary(50, 1)), (3, summary(50, 2))],
                Some(Signal::Impaired),
            ),
            // Three times slower but within the minimum gap: noise.
            (
                summary(50, 18),
                vec![(2, summary(50, 5))],
                Some(Signal::Healthy),
            ),
            (
                summary(50, 3),
                vec![(2, summary(50, 1))],
                Some(Signal::Healthy),
            ),
            // Much slower than one peer but not than the median of three.
            (
                summary(50, 60),
                vec![
                    (2, summary(50, 1)),
                    (3, summary(50, 30)),
                    (4, summary(50, 45)),
                ],
                Some(Signal::Healthy),
            ),
            // Everyone equally slow: the disk is not the outlier.
            (
                summary(50, 100),
                vec![(2, summary(50, 90)), (3, summary(50, 110))],
                Some(Signal::Healthy),
            ),
        ];
        for (own, peers, expected) in cases {
            let mut detector = SlowDiskDetector::new(policy);
            let first = detector.evaluate(0, own, &peers, false);
            let sustained = detector.evaluate(policy.sustain_ms, own, &peers, false);
            assert_eq!(sustained.signal, expected, "own {own:?} peers {peers:?}");
            // Slowness is not a signal before it has lasted; the rest is at once.
            let at_once = expected.filter(|signal| *signal != Signal::Impaired);
            assert_eq!(first.signal, at_once, "own {own:?} peers {peers:?}");
            assert_eq!(sustained.transfer_to, None);
        }
    }

    #[test]
    fn a_leader_transfers_only_after_sustained_slowness_and_not_again_before_the_cooldown() {
        let policy = SlowDiskPolicy::default();
        let mut detector = SlowDiskDetector::new(policy);
        let peers = [(2, summary(50, 2)), (3, summary(50, 1))];
        let slow = summary(50, 80);
        assert_eq!(detector.evaluate(0, slow, &peers, true).transfer_to, None);
        assert_eq!(
            detector.evaluate(2_000, slow, &peers, true).transfer_to,
            None
        );
        // Sustained for 3 s: hand over to the fastest disk, server 3.
        let verdict = detector.evaluate(3_000, slow, &peers, true);
        assert_eq!(verdict.transfer_to, Some(3));
        assert_eq!(verdict.signal, Some(Signal::Impaired));
        // Led again soon after: no second transfer inside the cooldown.
        assert_eq!(
            detector.evaluate(4_000, slow, &peers, true).transfer_to,
            None
        );
        assert_eq!(
            detector
                .evaluate(3_000 + policy.cooldown_ms, slow, &peers, true)
                .transfer_to,
            Some(3)
        );
    }

    #[test]
    fn a_break_in_slowness_restarts_the_clock_and_followers_never_transfer() {
        let policy = SlowDiskPolicy::default();
        let mut detector = SlowDiskDetector::new(policy);
        let peers = [(2, summary(50, 1))];
        let slow = summary(50, 80);
        let fast = summary(50, 1);
        detector.evaluate(0, slow, &peers, true);
        detector.evaluate(2_500, fast, &peers, true);
        assert_eq!(
            detector.evaluate(3_000, slow, &peers, true).transfer_to,
            None
        );
        assert_eq!(
            detector.evaluate(5_500, slow, &peers, true).transfer_to,
            None
        );
        assert_eq!(
            detector.evaluate(6_000, slow, &peers, true).transfer_to,
            Some(2)
        );

        let mut follower = SlowDiskDetector::new(policy);
        for at in (0..10_000).step_by(1_000) {
            let verdict = follower.evaluate(at, slow, &peers, false);
            let expected = (at >= policy.sustain_ms).then_some(Signal::Impaired);
            assert_eq!(verdict.signal, expected, "at {at}");
            assert_eq!(verdict.transfer_to, None);
        }
    }
}
