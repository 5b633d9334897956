//! tower adapters over the policy cores: each a `Layer` plus a `Service`, usable alone or
//! stacked with `tower::ServiceBuilder`. Services are `Clone`; clones share one core through an
//! `Arc`, so a stack cloned per task enforces one limit.
//!
//! Errors: every layer's service returns `Result<_, BoxError>`. A refusal by a layer is an
//! [`Error`] inside the box (downcast to inspect it, or use [`Error::from_box`]); the inner
//! service's errors pass through untouched. The success path allocates nothing.
//!
//! Cancellation: a response future may be dropped before it completes (a deadline above it
//! fired, a hedge lost, the caller went away). Whatever the call held is then given back —
//! a concurrency-limit place, a bulkhead slot or queue place, a shedder's count, a breaker's
//! half-open probe, a balancer endpoint's pending count — and the abandoned call is no
//! sample for any policy (its outcome is unknown), except client-side throttling, which
//! counts it as a request the backend did not accept. `tests/it/stack.rs` checks that every
//! layer is idle again after thousands of calls ended every way.

use std::cell::Cell;
use std::sync::Arc;

use crate::event::{EventSink, NoopSink};

#[cfg(feature = "balance")]
pub mod balance;
#[cfg(feature = "breaker")]
pub mod breaker;
#[cfg(feature = "bulkhead")]
pub mod bulkhead;
pub mod deadline;
pub mod fallback;
#[cfg(feature = "hedge")]
pub mod hedge;
#[cfg(feature = "limit")]
pub mod limit;
#[cfg(feature = "rate")]
pub mod rate;
#[cfg(feature = "retry")]
pub mod retry;
#[cfg(feature = "shed")]
pub mod shed;
#[cfg(feature = "throttle")]
pub mod throttle;

/// The error type of every layer's service.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A refusal by one of this crate's layers: the call never reached the inner service (or, for
/// [`Error::DeadlineExceeded`], was abandoned). Each variant says whether retrying elsewhere or
/// later can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The circuit breaker is open or its probes are taken.
    #[error(transparent)]
    Breaker(#[from] crate::policy::breaker::BreakerRejection),
    /// The bulkhead is full or the wait timed out.
    #[error(transparent)]
    Bulkhead(#[from] crate::policy::bulkhead::BulkheadRejection),
    /// The adaptive concurrency limit is reached.
    #[error(transparent)]
    Limit(#[from] crate::policy::limit::LimitReached),
    /// Over the rate.
    #[error(transparent)]
    Rate(#[from] crate::policy::rate::RateLimited),
    /// A keyed rate limit tracks too many active keys to admit a new one.
    #[error("rate limiter has no room for a new key")]
    RateKeysFull,
    /// Shed by priority.
    #[error("load shed at priority {0:?}")]
    Shed(crate::policy::shed::Priority),
    /// Rejected locally by client-side throttling.
    #[error("throttled by client-side adaptive throttling")]
    Throttled,
    /// The caller's deadline passed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// No endpoint to send to.
    #[error("no endpoint available")]
    NoEndpoint,
}

impl Error {
    /// Whether a later or different attempt may succeed (a retry layer keys off this).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Error::DeadlineExceeded)
    }

    /// The layer's error, if `error` is one.
    pub fn from_box(error: &BoxError) -> Option<&Error> {
        error.downcast_ref::<Error>()
    }
}

/// Nanoseconds since the clock was made: the one place where layers read time (cores get it
/// as an argument).
///
/// [`Clock::new`] reads the CPU's invariant time-stamp counter through `quanta` (a few
/// nanoseconds; the OS clock costs ~40 ns per read on this project's machines, more than a
/// whole layer's budget). [`Clock::tokio`] reads tokio's clock instead, so that
/// `tokio::time::pause` drives it: use it in tests on paused time.
#[derive(Debug, Clone)]
pub struct Clock {
    source: Source,
    /// tokio's instant at this clock's zero, to turn deadlines into timers.
    base: tokio::time::Instant,
}

#[derive(Debug, Clone)]
enum Source {
    Tsc { clock: quanta::Clock, zero: u64 },
    Tokio,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A fast monotonic clock whose zero is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let zero = clock.raw();
        Self {
            source: Source::Tsc { clock, zero },
            base: tokio::time::Instant::now(),
        }
    }

    /// A clock following tokio's (pausable) time, whose zero is now.
    pub fn tokio() -> Self {
        Self {
            source: Source::Tokio,
            base: tokio::time::Instant::now(),
        }
    }

    /// Nanoseconds since creation.
    pub fn now_ns(&self) -> u64 {
        match &self.source {
            Source::Tsc { clock, zero } => clock.delta_as_nanos(*zero, clock.raw()),
            Source::Tokio => u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// The time for a decision taken while a request passes down the stack (in `call`): the
    /// instant the outermost deadline layer read if its `call` is in progress on this thread
    /// (see [`Clock::enter_call`]), else now. Layers under a deadline layer thus share its
    /// clock read; the ~100 ns the request takes to reach them is far below what any of
    /// their decisions resolves. Completions still read the clock.
    pub(crate) fn call_now_ns(&self) -> u64 {
        match &self.source {
            Source::Tsc { clock, zero } => {
                let raw = CALL_RAW.with(Cell::get);
                let raw = if raw == 0 { clock.raw() } else { raw };
                clock.delta_as_nanos(*zero, raw)
            }
            Source::Tokio => self.now_ns(),
        }
    }

    /// The time for a completion observed while a response travels up the stack (in `poll`):
    /// inside a poll scope (see [`PollScope::enter`], opened by the deadline layer's future),
    /// the first completion on this thread reads the clock and the layers above it reuse that
    /// reading; outside one, now. Layers under a deadline layer thus share one clock read for
    /// their completions, as they share one for their decisions in `call`.
    pub(crate) fn done_now_ns(&self) -> u64 {
        match &self.source {
            Source::Tsc { clock, zero } => {
                let scoped = DONE_RAW.with(Cell::get);
                let raw = match scoped {
                    0 => clock.raw(),
                    DONE_UNREAD => {
                        let raw = clock.raw();
                        // 0 and DONE_UNREAD are markers: the TSC is neither after boot.
                        if raw != 0 && raw != DONE_UNREAD {
                            DONE_RAW.with(|cell| cell.set(raw));
                        }
                        raw
                    }
                    raw => raw,
                };
                clock.delta_as_nanos(*zero, raw)
            }
            Source::Tokio => self.now_ns(),
        }
    }

    /// Reads the clock and, unless a call scope is already open on this thread, opens one:
    /// until the returned scope drops, [`Clock::call_now_ns`] on this thread returns this
    /// reading. The scope must not outlive the synchronous `call` that opened it.
    pub(crate) fn enter_call(&self) -> (CallScope, u64) {
        match &self.source {
            Source::Tsc { clock, zero } => {
                let outer = CALL_RAW.with(Cell::get);
                let raw = if outer == 0 { clock.raw() } else { outer };
                // A reading of 0 would mean "no scope": the TSC is never 0 after boot.
                let is_owner = outer == 0 && raw != 0;
                if is_owner {
                    CALL_RAW.with(|cell| cell.set(raw));
                }
                (CallScope { is_owner }, clock.delta_as_nanos(*zero, raw))
            }
            Source::Tokio => (CallScope { is_owner: false }, self.now_ns()),
        }
    }

    /// The tokio instant `ns` nanoseconds after this clock's zero.
    pub fn instant_at(&self, ns: u64) -> tokio::time::Instant {
        self.base + std::time::Duration::from_nanos(ns)
    }
}

thread_local! {
    /// The raw clock reading of the outermost call scope open on this thread (0: none).
    static CALL_RAW: Cell<u64> = const { Cell::new(0) };
    /// The raw clock reading shared by completions in the poll scope open on this thread
    /// (0: no scope; [`DONE_UNREAD`]: a scope whose first completion has not read it yet).
    static DONE_RAW: Cell<u64> = const { Cell::new(0) };
}

/// [`DONE_RAW`]'s marker for an open poll scope with no reading yet.
const DONE_UNREAD: u64 = u64::MAX;

/// An open poll scope: while it lives, completions on this thread share one clock reading
/// (see [`Clock::done_now_ns`]). It must not outlive the synchronous `poll` that opened it,
/// so that a reading is never reused across a wait.
pub(crate) struct PollScope {
    is_owner: bool,
}

impl PollScope {
    /// Opens a poll scope unless one is open on this thread already (the outermost owns it).
    pub(crate) fn enter() -> Self {
        let is_owner = DONE_RAW.with(|cell| {
            let is_closed = cell.get() == 0;
            if is_closed {
                cell.set(DONE_UNREAD);
            }
            is_closed
        });
        Self { is_owner }
    }
}

impl Drop for PollScope {
    fn drop(&mut self) {
        if self.is_owner {
            DONE_RAW.with(|cell| cell.set(0));
        }
    }
}

/// An open call scope (see [`Clock::enter_call`]); closes it when dropped, even on a panic.
pub(crate) struct CallScope {
    is_owner: bool,
}

impl Drop for CallScope {
    fn drop(&mut self) {
        if self.is_owner {
            CALL_RAW.with(|cell| cell.set(0));
        }
    }
}

/// Decides whether a result counts as a failure of the dependency (for breakers, limiters,
/// ejection). Implemented for closures `Fn(&Result<R, E>) -> bool`.
pub trait Classify<R, E>: Clone + Send + Sync + 'static {
    /// Whether `result` is a failure.
    fn is_failure(&self, result: &Result<R, E>) -> bool;
}

/// Every `Err` is a failure, every `Ok` a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrIsFailure;

impl<R, E> Classify<R, E> for ErrIsFailure {
    fn is_failure(&self, result: &Result<R, E>) -> bool {
        result.is_err()
    }
}

impl<R, E, F> Classify<R, E> for F
where
    F: Fn(&Result<R, E>) -> bool + Clone + Send + Sync + 'static,
{
    fn is_failure(&self, result: &Result<R, E>) -> bool {
        self(result)
    }
}

/// What every layer instance carries: its name for events and its sink.
#[derive(Clone)]
pub struct Observe {
    /// The instance's name (`"kv-breaker"`), used as the `name` of its events.
    pub name: Arc<str>,
    /// Where events go.
    pub sink: Arc<dyn EventSink>,
}

impl std::fmt::Debug for Observe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observe")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Observe {
    /// Events named `name`, sent to `sink`.
    pub fn new(name: &str, sink: Arc<dyn EventSink>) -> Self {
        Self {
            name: name.into(),
            sink,
        }
    }

    /// Events named `name`, dropped.
    pub fn silent(name: &str) -> Self {
        Self::new(name, Arc::new(NoopSink))
    }

    #[cfg_attr(not(feature = "full"), allow(dead_code))]
    pub(crate) fn reject(&self, layer: crate::event::LayerKind, reason: &'static str) {
        self.sink.emit(&crate::event::Event::Rejected {
            name: &self.name,
            layer,
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_poll_scope_shares_the_first_completion_reading_until_dropped() {
        let clock = Clock::new();
        let other = Clock::new();
        let before = clock.done_now_ns();
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert!(
            clock.done_now_ns() >= before + 1_000_000,
            "outside a scope every completion reads the clock"
        );
        {
            let _scope = PollScope::enter();
            std::thread::sleep(std::time::Duration::from_millis(1));
            let first = clock.done_now_ns();
            assert!(
                first >= before + 2_000_000,
                "the first completion reads now"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
            {
                let _inner = PollScope::enter();
                assert_eq!(clock.done_now_ns(), first, "a nested scope reuses it");
            }
            assert_eq!(
                clock.done_now_ns(),
                first,
                "the nested scope did not close it"
            );
            // Another clock shares the raw reading, from its own zero.
            assert!(other.done_now_ns() < other.now_ns());
        }
        let after = clock.done_now_ns();
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert!(clock.done_now_ns() >= after + 1_000_000, "the scope closed");
    }

    #[test]
    fn clock_call_scope_shares_one_reading_until_dropped() {
        let clock = Clock::new();
        let other = Clock::new();
        {
            let (_scope, now_ns) = clock.enter_call();
            std::thread::sleep(std::time::Duration::from_millis(2));
            assert_eq!(
                clock.call_now_ns(),
                now_ns,
                "layers under the scope share its read"
            );
            {
                let (_inner, inner_ns) = clock.enter_call();
                assert_eq!(inner_ns, now_ns, "a nested scope reuses the outer reading");
            }
            assert_eq!(
                clock.call_now_ns(),
                now_ns,
                "the nested scope did not close it"
            );
            // Another clock reads the same counter from its own zero.
            assert!(other.call_now_ns() <= other.now_ns());
            assert!(
                clock.now_ns() >= now_ns + 2_000_000,
                "completions still read the clock"
            );
        }
        let (_scope, later_ns) = clock.enter_call();
        assert!(clock.call_now_ns() == later_ns);
        drop(_scope);
        assert!(
            clock.call_now_ns() > later_ns,
            "closed: reads the clock again"
        );
    }
}
