//! Circuit breaker core: count- or time-based sliding window, failure-rate and slow-call-rate
//! thresholds, a minimum number of calls, exponential backoff of the open duration on repeated
//! trips, a half-open state admitting a limited number of probes, and an adaptive option that
//! trips on a cluster of consecutive failures before the window has its minimum.
//!
//! ```text
//!            rate over threshold (calls ≥ calls_min)
//!            or consecutive_failures_trip reached
//!   ┌────────┐ ───────────────────────────────► ┌──────┐
//!   │ Closed │                                  │ Open │ ◄─┐ probe failed or slow
//!   └────────┘ ◄──┐                             └──────┘   │ (open time doubles)
//!                 │ all probes succeeded          │ open time elapsed
//!                 │ (open time resets)            ▼        │
//!                 └─────────────────────────── ┌──────────┐┘
//!                                              │ HalfOpen │  admits half_open_probes calls
//!                                              └──────────┘
//! ```
//!
//! The core is shared by reference (`&self`) and lock-free on the success path: admitting a call
//! in the closed state is one atomic load, and recording a success is two or three atomic
//! read-modify-writes. Transitions are rare and take a small mutex. Time is an input (`now_ns`,
//! nanoseconds since any epoch the caller keeps fixed); the core reads no clock.
//!
//! Cluster evidence: [`Breaker::force_open`] lets a caller open the breaker on evidence from
//! elsewhere (a peer's breaker state arriving by gossip), through the same transition path.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::Serialize;

use super::window::TimeWindow;

/// Calls a count window may hold at most.
pub const COUNT_WINDOW_CALLS_MAX: u32 = 100_000;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Calls flow; outcomes are recorded in the window.
    Closed,
    /// Calls are rejected until the open time elapses.
    Open,
    /// A limited number of probe calls decide between closing and reopening.
    HalfOpen,
}

impl BreakerState {
    /// The state's name as used in events and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// How the breaker's window counts calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// The last `calls` outcomes (in up to 10 buckets: with more than 10 calls the window
    /// may hold up to one bucket more).
    Count {
        /// Outcomes kept.
        calls: u32,
    },
    /// The outcomes of the last `buckets × bucket_ns` nanoseconds.
    Time {
        /// Buckets in the window.
        buckets: u32,
        /// Length of one bucket.
        bucket_ns: u64,
    },
}

/// Breaker configuration; see [`BreakerConfig::validate`] for the rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// How outcomes are windowed.
    pub window: WindowKind,
    /// Trip when failures ÷ calls reaches this (0 < x ≤ 1).
    pub failure_rate_threshold: f64,
    /// Trip when slow calls ÷ calls reaches this (0 < x ≤ 1).
    pub slow_rate_threshold: f64,
    /// A call taking at least this long is slow; `None` disables slow-call accounting.
    pub slow_call_ns: Option<u64>,
    /// Rates are not evaluated before the window holds this many calls.
    pub calls_min: u32,
    /// Open time after the first trip.
    pub open_ns: u64,
    /// Open time never exceeds this, however many consecutive trips.
    pub open_ns_max: u64,
    /// Probe calls admitted in half-open; all must succeed to close.
    pub half_open_probes: u32,
    /// Adaptive option: this many consecutive failures trip the breaker even below `calls_min`
    /// (failures that cluster are evidence sooner than a rate over a window).
    pub consecutive_failures_trip: Option<u32>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: WindowKind::Count { calls: 100 },
            failure_rate_threshold: 0.5,
            slow_rate_threshold: 1.0,
            slow_call_ns: None,
            calls_min: 20,
            open_ns: 5_000_000_000,
            open_ns_max: 60_000_000_000,
            half_open_probes: 5,
            consecutive_failures_trip: None,
        }
    }
}

/// A configuration value out of range; nothing was built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid breaker config: {0}")]
pub struct BreakerConfigError(&'static str);

impl BreakerConfig {
    /// Checks every rule once, at construction.
    ///
    /// # Errors
    /// Returns which rule the configuration breaks.
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        let rate_ok = |x: f64| x > 0.0 && x <= 1.0;
        if !rate_ok(self.failure_rate_threshold) {
            return Err(BreakerConfigError(
                "failure_rate_threshold must be in (0, 1]",
            ));
        }
        if !rate_ok(self.slow_rate_threshold) {
            return Err(BreakerConfigError("slow_rate_threshold must be in (0, 1]"));
        }
        match self.window {
            WindowKind::Count { calls } if calls == 0 || calls > COUNT_WINDOW_CALLS_MAX => {
                return Err(BreakerConfigError(
                    "count window calls must be in 1..=100000",
                ));
            }
            WindowKind::Time { buckets, bucket_ns }
                if buckets == 0 || buckets > super::window::BUCKETS_MAX || bucket_ns == 0 =>
            {
                return Err(BreakerConfigError(
                    "time window needs 1..=1024 buckets of > 0 ns",
                ));
            }
            _ => {}
        }
        if self.calls_min == 0 {
            return Err(BreakerConfigError("calls_min must be positive"));
        }
        if self.open_ns == 0 || self.open_ns > self.open_ns_max {
            return Err(BreakerConfigError("need 0 < open_ns <= open_ns_max"));
        }
        if self.open_ns_max >= 1 << 61 {
            return Err(BreakerConfigError("open_ns_max too large"));
        }
        if self.half_open_probes == 0 {
            return Err(BreakerConfigError("half_open_probes must be positive"));
        }
        if self.consecutive_failures_trip == Some(0) {
            return Err(BreakerConfigError(
                "consecutive_failures_trip must be positive",
            ));
        }
        Ok(())
    }
}

/// Permission to make one call; hand it back with the outcome.
#[derive(Clone, Copy, PartialEq, Eq)]
#[must_use = "pass the permit to Breaker::on_result"]
pub struct Permit {
    /// The generation it was given in, shifted left one bit, and whether it is a probe in
    /// the low bit: one word, so that the permit is written and read whole (a `bool` beside
    /// the generation was written as one byte and read back as a word, which stalled the
    /// success path on a failed store-to-load forward).
    tagged: u64,
}

impl Permit {
    fn new(generation: u64, probe: bool) -> Self {
        Self {
            tagged: generation << 1 | u64::from(probe),
        }
    }

    /// The breaker's generation when the permit was given (compared with the current one
    /// only; a wrap after 2^63 transitions is beyond reach).
    fn generation(&self) -> u64 {
        self.tagged >> 1
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.tagged & 1 == 1
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("generation", &self.generation())
            .field("probe", &self.is_probe())
            .finish()
    }
}

/// Why a call was refused; the breaker's state did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BreakerRejection {
    /// The breaker is open.
    #[error("circuit open, retry after {retry_after_ns} ns")]
    Open {
        /// Time until the breaker lets probes through.
        retry_after_ns: u64,
    },
    /// Half-open and every probe slot is taken.
    #[error("circuit half-open, probes exhausted")]
    ProbesExhausted,
}

/// A state change, for the caller to log and export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
    /// When opening: how long the breaker stays open.
    pub open_ns: Option<u64>,
}

/// A call's outcome as the breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallOutcome {
    /// The call failed in a way that counts against the dependency.
    pub is_failure: bool,
    /// How long the call took (used only when `slow_call_ns` is set).
    pub latency_ns: u64,
}

impl CallOutcome {
    /// A success that took `latency_ns`.
    pub fn success(latency_ns: u64) -> Self {
        Self {
            is_failure: false,
            latency_ns,
        }
    }

    /// A failure that took `latency_ns`.
    pub fn failure(latency_ns: u64) -> Self {
        Self {
            is_failure: true,
            latency_ns,
        }
    }
}

// A count bucket packs three 21-bit counters in one word, so recording a success is one
// `fetch_add`: calls (bits 0..21), failures (21..42), slow calls (42..63).
const FIELD_BITS: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;
const ONE_CALL: u64 = 1;
const ONE_FAILURE: u64 = 1 << FIELD_BITS;
const ONE_SLOW: u64 = 1 << (2 * FIELD_BITS);
/// Buckets a count window is split into at most.
const COUNT_BUCKETS_MAX: u32 = 10;

/// The last `calls` outcomes, kept as `buckets` buckets of `per_bucket` calls plus the bucket
/// being filled: the window holds between `calls` and `calls + per_bucket − 1` outcomes
/// (exactly `calls` when `calls ≤ 10`, where every bucket holds one call).
struct CountWindow {
    /// 16 packed counters used round robin (a power of two, so indexing is a mask, not a
    /// division); the window is the bucket being filled and the `buckets` before it.
    ring: [AtomicU64; RING],
    /// Index (ever increasing) of the bucket being filled.
    current: AtomicU64,
    buckets: u64,
    per_bucket: u64,
}

/// Slots of a count window's ring.
const RING: usize = 16;
const _: () = assert!((COUNT_BUCKETS_MAX as usize) < RING);

impl CountWindow {
    fn new(calls: u32) -> Self {
        let buckets = calls.min(COUNT_BUCKETS_MAX);
        let per_bucket = u64::from(calls.div_ceil(buckets));
        assert!(per_bucket < FIELD_MASK, "bucket counters must not overflow");
        Self {
            ring: std::array::from_fn(|_| AtomicU64::new(0)),
            current: AtomicU64::new(0),
            buckets: u64::from(buckets),
            per_bucket,
        }
    }

    #[inline]
    fn record(&self, is_failure: bool, is_slow: bool) {
        let mut delta = ONE_CALL;
        if is_failure {
            delta += ONE_FAILURE;
        }
        if is_slow {
            delta += ONE_SLOW;
        }
        let current = self.current.load(Ordering::Acquire);
        let slot = |index: u64| &self.ring[(index as usize) & (RING - 1)];
        let before = slot(current).fetch_add(delta, Ordering::AcqRel);
        // The call that fills the bucket moves the window on; a racing call that loaded the
        // old index lands in the full bucket (counted one bucket longer, never lost).
        if (before & FIELD_MASK) + 1 == self.per_bucket {
            slot(current + 1).store(0, Ordering::Release);
            let _ = self.current.compare_exchange(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    fn tally(&self) -> Tally {
        let mut tally = Tally::default();
        let current = self.current.load(Ordering::Acquire);
        for index in current.saturating_sub(self.buckets)..=current {
            let word = self.ring[(index as usize) & (RING - 1)].load(Ordering::Acquire);
            tally.calls += word & FIELD_MASK;
            tally.failures += (word >> FIELD_BITS) & FIELD_MASK;
            tally.slow += (word >> (2 * FIELD_BITS)) & FIELD_MASK;
        }
        tally
    }

    fn reset(&self) {
        for bucket in &self.ring {
            bucket.store(0, Ordering::Release);
        }
        self.current.store(0, Ordering::Release);
    }
}

enum Window {
    Count(CountWindow),
    Time(TimeWindow<3>),
}

/// Counts in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    /// Calls recorded.
    pub calls: u64,
    /// Of which failed.
    pub failures: u64,
    /// Of which were slow.
    pub slow: u64,
}

impl Window {
    #[inline]
    fn record(&self, now_ns: u64, is_failure: bool, is_slow: bool) {
        match self {
            Window::Count(window) => window.record(is_failure, is_slow),
            Window::Time(window) => {
                window.add(now_ns, 0, 1);
                if is_failure {
                    window.add(now_ns, 1, 1);
                }
                if is_slow {
                    window.add(now_ns, 2, 1);
                }
            }
        }
    }

    fn tally(&self, now_ns: u64) -> Tally {
        match self {
            Window::Count(window) => window.tally(),
            Window::Time(window) => {
                let [calls, failures, slow] = window.sums(now_ns);
                Tally {
                    calls,
                    failures,
                    slow,
                }
            }
        }
    }

    fn reset(&self) {
        match self {
            Window::Count(window) => window.reset(),
            Window::Time(window) => window.reset(),
        }
    }
}

// The state word: the tag in the low two bits, the open deadline (ns) above them.
const TAG_CLOSED: u64 = 0;
const TAG_OPEN: u64 = 1;
const TAG_HALF_OPEN: u64 = 2;

fn tag_of(word: u64) -> u64 {
    word & 3
}

fn state_of(word: u64) -> BreakerState {
    match tag_of(word) {
        TAG_CLOSED => BreakerState::Closed,
        TAG_OPEN => BreakerState::Open,
        _ => BreakerState::HalfOpen,
    }
}

/// State only touched on transitions, under the mutex.
#[derive(Debug, Default)]
struct Slow {
    /// Trips since the breaker last closed from half-open; drives the open-time backoff.
    trips_consecutive: u32,
    /// Probes that succeeded in the current half-open period.
    probe_successes: u32,
    /// Total trips (for reporting).
    trips_total: u64,
}

/// The circuit breaker core; see the module doc.
pub struct Breaker {
    config: BreakerConfig,
    /// Tag and open deadline; see `TAG_*`.
    word: AtomicU64,
    /// Bumped on every transition; permits from an older generation are ignored.
    generation: AtomicU64,
    /// Probes admitted in the current half-open period.
    probes_admitted: AtomicU32,
    /// Failures in a row in the closed state (for the adaptive trip).
    failures_consecutive: AtomicU32,
    window: Window,
    slow_path: Mutex<Slow>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Breaker {
    /// A closed breaker.
    ///
    /// # Errors
    /// Returns the configuration rule broken; see [`BreakerConfig::validate`].
    pub fn new(config: BreakerConfig) -> Result<Self, BreakerConfigError> {
        config.validate()?;
        let window = match config.window {
            WindowKind::Count { calls } => Window::Count(CountWindow::new(calls)),
            WindowKind::Time { buckets, bucket_ns } => {
                Window::Time(TimeWindow::new(buckets, bucket_ns))
            }
        };
        Ok(Self {
            config,
            word: AtomicU64::new(TAG_CLOSED),
            generation: AtomicU64::new(0),
            probes_admitted: AtomicU32::new(0),
            failures_consecutive: AtomicU32::new(0),
            window,
            slow_path: Mutex::new(Slow::default()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state (an open breaker whose time has elapsed reads as open until a call
    /// moves it to half-open).
    pub fn state(&self) -> BreakerState {
        state_of(self.word.load(Ordering::Acquire))
    }

    /// The window's counts at `now_ns`.
    pub fn tally(&self, now_ns: u64) -> Tally {
        self.window.tally(now_ns)
    }

    /// Trips since the breaker last closed.
    pub fn trips_consecutive(&self) -> u32 {
        self.lock().trips_consecutive
    }

    /// Total trips since creation.
    pub fn trips_total(&self) -> u64 {
        self.lock().trips_total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slow> {
        // A panic while holding this lock leaves only counters behind; keep going.
        self.slow_path
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks to make a call at `now_ns`. May move an open breaker whose time elapsed to
    /// half-open, returned as a [`Transition`].
    ///
    /// # Errors
    /// [`BreakerRejection`] when the call must not be made; the state did not change.
    #[inline]
    pub fn try_acquire(
        &self,
        now_ns: u64,
    ) -> (Result<Permit, BreakerRejection>, Option<Transition>) {
        let word = self.word.load(Ordering::Acquire);
        if tag_of(word) == TAG_CLOSED {
            let generation = self.generation.load(Ordering::Acquire);
            return (Ok(Permit::new(generation, false)), None);
        }
        self.try_acquire_slow(word, now_ns)
    }

    #[cold]
    #[inline(never)]
    fn try_acquire_slow(
        &self,
        word: u64,
        now_ns: u64,
    ) -> (Result<Permit, BreakerRejection>, Option<Transition>) {
        match tag_of(word) {
            TAG_OPEN => {
                let open_until_ns = word >> 2;
                if now_ns < open_until_ns {
                    let retry_after_ns = open_until_ns - now_ns;
                    return (Err(BreakerRejection::Open { retry_after_ns }), None);
                }
                let transition = self.to_half_open(word);
                let (result, _) = self.try_acquire_probe();
                (result, transition)
            }
            _ => self.try_acquire_probe(),
        }
    }

    fn try_acquire_probe(&self) -> (Result<Permit, BreakerRejection>, Option<Transition>) {
        let word = self.word.load(Ordering::Acquire);
        if tag_of(word) != TAG_HALF_OPEN {
            // Lost a race with a probe's outcome; the caller simply tries again later.
            return (Err(BreakerRejection::ProbesExhausted), None);
        }
        let generation = self.generation.load(Ordering::Acquire);
        // Count only admitted probes, so that a cancelled probe's slot can be handed back.
        let limit = self.config.half_open_probes;
        let admitted =
            self.probes_admitted
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < limit).then_some(n + 1)
                });
        match admitted {
            Ok(_) => (Ok(Permit::new(generation, true)), None),
            Err(_) => (Err(BreakerRejection::ProbesExhausted), None),
        }
    }

    fn to_half_open(&self, expected_word: u64) -> Option<Transition> {
        let _slow = self.lock();
        if self.word.load(Ordering::Acquire) != expected_word {
            return None;
        }
        self.probes_admitted.store(0, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.word.store(TAG_HALF_OPEN, Ordering::Release);
        Some(Transition {
            from: BreakerState::Open,
            to: BreakerState::HalfOpen,
            open_ns: None,
        })
    }

    /// Records the outcome of a call admitted by `permit`. Returns the transition it caused,
    /// if any. Outcomes of permits from before the last transition are ignored.
    #[inline]
    pub fn on_result(
        &self,
        now_ns: u64,
        permit: Permit,
        outcome: CallOutcome,
    ) -> Option<Transition> {
        let is_slow = self
            .config
            .slow_call_ns
            .is_some_and(|slow_ns| outcome.latency_ns >= slow_ns);
        // The success path, inlined: a fresh normal permit, a fast success, nothing to reset.
        if !permit.is_probe()
            && !outcome.is_failure
            && !is_slow
            && self.config.consecutive_failures_trip.is_none()
            && self.generation.load(Ordering::Acquire) == permit.generation()
        {
            self.window.record(now_ns, false, false);
            return None;
        }
        self.on_result_slow(now_ns, permit, outcome, is_slow)
    }

    #[inline(never)]
    fn on_result_slow(
        &self,
        now_ns: u64,
        permit: Permit,
        outcome: CallOutcome,
        is_slow: bool,
    ) -> Option<Transition> {
        if self.generation.load(Ordering::Acquire) != permit.generation() {
            return None;
        }
        if permit.is_probe() {
            return self.on_probe_result(now_ns, permit, outcome.is_failure || is_slow);
        }
        self.window.record(now_ns, outcome.is_failure, is_slow);
        if !outcome.is_failure {
            if self.config.consecutive_failures_trip.is_some()
                && self.failures_consecutive.load(Ordering::Relaxed) != 0
            {
                self.failures_consecutive.store(0, Ordering::Relaxed);
            }
            // A success lowers the failure rate; only a slow success can trip.
            if !is_slow {
                return None;
            }
        }
        let failures_consecutive = if outcome.is_failure {
            self.failures_consecutive.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            0
        };
        let cluster = self
            .config
            .consecutive_failures_trip
            .is_some_and(|n| failures_consecutive >= n);
        if cluster || self.is_over_threshold(self.window.tally(now_ns)) {
            return self.trip(now_ns, permit.generation());
        }
        None
    }

    fn is_over_threshold(&self, tally: Tally) -> bool {
        if tally.calls < u64::from(self.config.calls_min) || tally.calls == 0 {
            return false;
        }
        let calls = tally.calls as f64;
        let failure_rate = tally.failures as f64 / calls;
        let slow_rate = tally.slow as f64 / calls;
        failure_rate >= self.config.failure_rate_threshold
            || (self.config.slow_call_ns.is_some() && slow_rate >= self.config.slow_rate_threshold)
    }

    fn on_probe_result(&self, now_ns: u64, permit: Permit, is_bad: bool) -> Option<Transition> {
        if is_bad {
            return self.trip(now_ns, permit.generation());
        }
        let mut slow = self.lock();
        if self.generation.load(Ordering::Acquire) != permit.generation() {
            return None;
        }
        assert_eq!(tag_of(self.word.load(Ordering::Acquire)), TAG_HALF_OPEN);
        slow.probe_successes += 1;
        assert!(slow.probe_successes <= self.config.half_open_probes);
        if slow.probe_successes < self.config.half_open_probes {
            return None;
        }
        slow.probe_successes = 0;
        slow.trips_consecutive = 0;
        self.window.reset();
        self.failures_consecutive.store(0, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.word.store(TAG_CLOSED, Ordering::Release);
        Some(Transition {
            from: BreakerState::HalfOpen,
            to: BreakerState::Closed,
            open_ns: None,
        })
    }

    /// The call admitted by `permit` was never made, or was abandoned without an outcome
    /// (cancelled): a probe gives its slot back so half-open cannot stall; a normal permit
    /// records nothing.
    pub fn on_cancel(&self, permit: Permit) {
        if !permit.is_probe() || self.generation.load(Ordering::Acquire) != permit.generation() {
            return;
        }
        let _slow = self.lock();
        if self.generation.load(Ordering::Acquire) == permit.generation() {
            let admitted = self.probes_admitted.load(Ordering::Acquire);
            assert!(admitted > 0, "a probe permit was issued");
            self.probes_admitted.store(admitted - 1, Ordering::Release);
        }
    }

    /// Opens the breaker now, whatever its state, as if it had tripped (evidence from outside
    /// the window, e.g. peers reporting the dependency down). Returns the transition, or `None`
    /// if it was already open.
    pub fn force_open(&self, now_ns: u64) -> Option<Transition> {
        let generation = self.generation.load(Ordering::Acquire);
        if tag_of(self.word.load(Ordering::Acquire)) == TAG_OPEN {
            return None;
        }
        self.trip(now_ns, generation)
    }

    fn trip(&self, now_ns: u64, generation: u64) -> Option<Transition> {
        let mut slow = self.lock();
        if self.generation.load(Ordering::Acquire) != generation {
            // Another outcome already moved the breaker.
            return None;
        }
        let word = self.word.load(Ordering::Acquire);
        let from = state_of(word);
        assert_ne!(from, BreakerState::Open, "tripping an open breaker");
        let shift = slow.trips_consecutive.min(32);
        let open_ns = self
            .config
            .open_ns
            .saturating_mul(1u64 << shift)
            .min(self.config.open_ns_max);
        slow.trips_consecutive = slow.trips_consecutive.saturating_add(1);
        slow.trips_total += 1;
        slow.probe_successes = 0;
        let open_until_ns = now_ns.saturating_add(open_ns).min((1 << 62) - 1);
        self.window.reset();
        self.failures_consecutive.store(0, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.word
            .store((open_until_ns << 2) | TAG_OPEN, Ordering::Release);
        assert!(open_ns >= self.config.open_ns.min(self.config.open_ns_max));
        Some(Transition {
            from,
            to: BreakerState::Open,
            open_ns: Some(open_ns),
        })
    }

    /// Checks the invariants that hold between operations.
    ///
    /// # Panics
    /// Panics if one is broken.
    pub fn check_invariants(&self) {
        let word = self.word.load(Ordering::Acquire);
        assert!(tag_of(word) <= TAG_HALF_OPEN);
        if tag_of(word) != TAG_OPEN {
            assert_eq!(word >> 2, 0, "only an open breaker has a deadline");
        }
        let slow = self.lock();
        assert!(slow.probe_successes <= self.config.half_open_probes);
        if tag_of(word) != TAG_HALF_OPEN {
            assert_eq!(slow.probe_successes, 0);
        }
        // Only closing (from half-open) resets the backoff, so a closed breaker has none and
        // an open or half-open one has at least its own trip.
        if tag_of(word) == TAG_CLOSED {
            assert_eq!(slow.trips_consecutive, 0);
        } else {
            assert!(slow.trips_consecutive >= 1);
        }
    }
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
