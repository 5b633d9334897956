//! Tunables of the membership protocol. Times are microseconds of the caller's clock.

/// One second in the core's time unit (microseconds).
pub const SECOND: u64 = 1_000_000;
/// One millisecond in the core's time unit.
pub const MILLI: u64 = 1_000;

/// Protocol parameters. [`Config::lan`] is the default profile; every field is documented with
/// the effect of changing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Time between two probes of this node (scaled by the Lifeguard awareness multiplier).
    pub probe_interval: u64,
    /// How long a direct ping waits for its ack before indirect probes start (scaled).
    pub probe_timeout: u64,
    /// A second direct ping is sent this long after the first if no ack came yet.
    pub probe_retry: u64,
    /// Members asked to ping the target on our behalf when the direct ping fails (SWIM's k).
    pub indirect_checks: usize,
    /// Time between two gossip rounds; a round sends pending updates to `gossip_fanout` members.
    pub gossip_interval: u64,
    /// Members a gossip round sends to.
    pub gossip_fanout: usize,
    /// An update is retransmitted `retransmit_mult × ⌈log10(n + 1)⌉` times.
    pub retransmit_mult: u32,
    /// Suspicion timeout floor factor: `min = suspicion_mult × log10(n) × probe_interval`
    /// (in thousandths, so 1500 is 1.5).
    pub suspicion_mult_milli: u64,
    /// The suspicion timeout never goes below this.
    pub suspicion_floor: u64,
    /// Lifeguard: a fresh suspicion starts at `suspicion_max_mult × min` and shrinks towards
    /// `min` as independent confirmations arrive.
    pub suspicion_max_mult: u64,
    /// Lifeguard: confirmations needed to reach the minimum timeout.
    pub suspicion_confirmations: u32,
    /// Time between two digest exchanges with a random member (anti-entropy).
    pub push_pull_interval: u64,
    /// Time between two attempts to reach a random failed member (heals partitions).
    pub reconnect_interval: u64,
    /// Failed members are forgotten this long after they failed.
    pub dead_reap_after: u64,
    /// Members that left are forgotten this long after they left.
    pub left_reap_after: u64,
    /// Largest datagram sent, piggybacked updates included.
    pub max_packet: usize,
    /// Lifeguard on (local health awareness, nacks, dynamic suspicion, buddy system) or off
    /// (plain SWIM with a fixed suspicion timeout), for comparison.
    pub lifeguard: bool,
    /// Lifeguard: the awareness multiplier never exceeds this.
    pub awareness_max: u32,
    /// User events remembered (for de-duplication and `/v1/event/list`).
    pub event_buffer: usize,
}

impl Config {
    /// Defaults for a local network. Probe and gossip timings are Serf's LAN profile (1 s
    /// probes, 500 ms probe timeout, 200 ms gossip); suspicion is shorter than memberlist's
    /// (multiplier 1 and at most 4× instead of 4 and 6×), which is what halves detection time.
    /// A member paused longer than about a second and a half, repeatedly, is therefore declared
    /// failed once before the patience rule stretches its timeouts.
    pub fn lan() -> Self {
        Self {
            probe_interval: SECOND,
            probe_timeout: 500 * MILLI,
            probe_retry: 200 * MILLI,
            indirect_checks: 3,
            gossip_interval: 200 * MILLI,
            gossip_fanout: 4,
            retransmit_mult: 6,
            suspicion_mult_milli: 1_000,
            suspicion_floor: SECOND,
            suspicion_max_mult: 4,
            suspicion_confirmations: 3,
            push_pull_interval: 30 * SECOND,
            reconnect_interval: 5 * SECOND,
            dead_reap_after: 3_600 * SECOND,
            left_reap_after: 3_600 * SECOND,
            max_packet: 1_400,
            lifeguard: true,
            awareness_max: 8,
            event_buffer: 256,
        }
    }

    /// Retransmissions of one update in a cluster of `n` members.
    pub fn retransmit_limit(&self, n: usize) -> u32 {
        let log = ((n as f64) + 1.0).log10().ceil().max(1.0) as u32;
        self.retransmit_mult * log
    }

    /// Minimum suspicion timeout in a cluster of `n` members.
    pub fn suspicion_min(&self, n: usize) -> u64 {
        let log = (n.max(1) as f64).log10().max(1.0);
        let t = (self.suspicion_mult_milli as f64 / 1000.0) * log * self.probe_interval as f64;
        (t as u64).max(self.suspicion_floor)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::lan()
    }
}
