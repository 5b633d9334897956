//! Deadlines: the caller's time budget travels with the call as a [`Deadline`] (an absolute
//! time on the layer [`Clock`](super::Clock)), and the call is abandoned with
//! [`Error::DeadlineExceeded`] when it passes. The retry and hedge layers read the same
//! deadline (through [`HasDeadline`]) so that no retry outlives its caller.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

use super::{BoxError, Clock, Error};

/// An absolute deadline, in nanoseconds of a [`Clock`](super::Clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    /// When the caller stops waiting.
    pub at_ns: u64,
}

/// Requests that carry a deadline.
pub trait HasDeadline {
    /// The request's deadline, if any.
    fn deadline(&self) -> Option<Deadline>;
}

/// A request with a deadline attached (use it as the request type of a stack, or implement
/// [`HasDeadline`] for your own request type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithDeadline<T> {
    /// The request.
    pub request: T,
    /// Its deadline.
    pub deadline: Option<Deadline>,
}

impl<T> HasDeadline for WithDeadline<T> {
    fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }
}

/// Fails calls still running at their deadline; requests without one get `budget` from now.
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    budget: Duration,
    clock: Clock,
}

impl DeadlineLayer {
    /// Calls without a deadline get `budget`.
    pub fn new(budget: Duration, clock: Clock) -> Self {
        Self { budget, clock }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            budget: self.budget,
            clock: self.clock.clone(),
        }
    }
}

/// The deadline service; see [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    budget: Duration,
    clock: Clock,
}

impl<S, T> Service<WithDeadline<T>> for DeadlineService<S>
where
    S: Service<WithDeadline<T>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: WithDeadline<T>) -> Self::Future {
        let budget_ns = u64::try_from(self.budget.as_nanos()).unwrap_or(u64::MAX);
        // One clock read for the whole stack below: its layers read this one in their `call`.
        let (_scope, now_ns) = self.clock.enter_call();
        let deadline = *request.deadline.get_or_insert(Deadline {
            at_ns: now_ns.saturating_add(budget_ns),
        });
        DeadlineFuture {
            future: self.inner.call(request),
            timer: Timer::Unarmed {
                at: self.clock.instant_at(deadline.at_ns),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The deadline's response future. The timer is armed only if the call does not answer
    /// at its first poll, so a quick call never touches tokio's timer wheel.
    pub struct DeadlineFuture<F> {
        #[pin]
        future: F,
        #[pin]
        timer: Timer,
    }
}

pin_project_lite::pin_project! {
    #[project = TimerProj]
    enum Timer {
        Unarmed { at: tokio::time::Instant },
        Armed { #[pin] sleep: tokio::time::Sleep },
    }
}

impl<F, R, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Completions below share one clock read in this poll (`Clock::done_now_ns`).
        let scope = super::PollScope::enter();
        let polled = this.future.poll(cx);
        drop(scope);
        if let Poll::Ready(result) = polled {
            return Poll::Ready(result.map_err(Into::into));
        }
        if let TimerProj::Unarmed { at } = this.timer.as_mut().project() {
            let sleep = tokio::time::sleep_until(*at);
            this.timer.set(Timer::Armed { sleep });
        }
        match this.timer.project() {
            TimerProj::Armed { sleep } => match sleep.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(Error::DeadlineExceeded.into())),
                Poll::Pending => Poll::Pending,
            },
            TimerProj::Unarmed { .. } => unreachable!("armed just above"),
        }
    }
}
