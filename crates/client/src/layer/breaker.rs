//! The circuit breaker as a tower layer over [`crate::policy::breaker::Breaker`]. A refused
//! call fails with [`Error::Breaker`]; pair it with [`super::fallback`] to answer instead.
//! The clock is read only when the core needs it (an open breaker, a time window, slow-call
//! accounting), so a closed count-window breaker costs a few atomic operations per call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{BoxError, Classify, Clock, ErrIsFailure, Error, Observe};
use crate::event::{Event, LayerKind};
use crate::policy::breaker::{
    Breaker, BreakerRejection, CallOutcome, Permit, Transition, WindowKind,
};

/// Wraps services in a shared circuit breaker.
#[derive(Debug, Clone)]
pub struct BreakerLayer<K = ErrIsFailure> {
    shared: Arc<Shared>,
    classify: K,
}

#[derive(Debug)]
struct Shared {
    breaker: Breaker,
    observe: Observe,
    clock: Clock,
    needs_clock: bool,
}

impl Shared {
    fn now_if_needed(&self) -> u64 {
        if self.needs_clock {
            self.clock.done_now_ns()
        } else {
            0
        }
    }

    fn emit(&self, transition: Option<Transition>) {
        if let Some(t) = transition {
            self.observe.sink.emit(&Event::BreakerTransition {
                name: &self.observe.name,
                from: t.from,
                to: t.to,
            });
        }
    }
}

impl BreakerLayer {
    /// A layer over `breaker`; `Err` results count as failures.
    pub fn new(breaker: Breaker, observe: Observe) -> Self {
        Self::with_clock(breaker, observe, Clock::new())
    }

    /// Like [`BreakerLayer::new`] with a given clock.
    pub fn with_clock(breaker: Breaker, observe: Observe, clock: Clock) -> Self {
        let config = breaker.config();
        let needs_clock =
            config.slow_call_ns.is_some() || matches!(config.window, WindowKind::Time { .. });
        Self {
            shared: Arc::new(Shared {
                breaker,
                observe,
                clock,
                needs_clock,
            }),
            classify: ErrIsFailure,
        }
    }
}

impl<K> BreakerLayer<K> {
    /// Uses `classify` to decide which results are failures.
    pub fn classify<K2>(self, classify: K2) -> BreakerLayer<K2> {
        BreakerLayer {
            shared: self.shared,
            classify,
        }
    }

    /// The shared breaker (to read its state or feed it outside evidence).
    pub fn breaker(&self) -> &Breaker {
        &self.shared.breaker
    }
}

impl<S, K: Clone> Layer<S> for BreakerLayer<K> {
    type Service = BreakerService<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            shared: self.shared.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// The breaker's service; see [`BreakerLayer`].
#[derive(Debug, Clone)]
pub struct BreakerService<S, K = ErrIsFailure> {
    inner: S,
    shared: Arc<Shared>,
    classify: K,
}

impl<S, K, Req> Service<Req> for BreakerService<S, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BreakerFuture<S::Future, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let shared = &self.shared;
        let word_open = shared.breaker.state() != crate::policy::breaker::BreakerState::Closed;
        let now = if word_open || shared.needs_clock {
            shared.clock.call_now_ns()
        } else {
            0
        };
        let (result, transition) = shared.breaker.try_acquire(now);
        shared.emit(transition);
        match result {
            Ok(permit) => BreakerFuture {
                state: State::Called {
                    future: self.inner.call(request),
                    guard: PermitGuard {
                        permit: Some(permit),
                        shared: shared.clone(),
                    },
                    start_ns: now,
                    classify: self.classify.clone(),
                },
            },
            Err(rejection) => {
                let reason = match rejection {
                    BreakerRejection::Open { .. } => "open",
                    BreakerRejection::ProbesExhausted => "probes-exhausted",
                };
                shared.observe.reject(LayerKind::Breaker, reason);
                BreakerFuture {
                    state: State::Rejected {
                        error: Some(rejection),
                    },
                }
            }
        }
    }
}

/// A permit whose call has not finished; dropped unfinished (the caller cancelled), it hands
/// a probe slot back so the half-open state cannot stall.
pub struct PermitGuard {
    permit: Option<Permit>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PermitGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PermitGuard")
            .field("permit", &self.permit)
            .finish()
    }
}

impl Drop for PermitGuard {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.shared.breaker.on_cancel(permit);
        }
    }
}

pin_project_lite::pin_project! {
    /// The breaker's response future.
    pub struct BreakerFuture<F, K> {
        #[pin]
        state: State<F, K>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, K> {
        Called { #[pin] future: F, guard: PermitGuard, start_ns: u64, classify: K },
        Rejected { error: Option<BreakerRejection> },
    }
}

impl<F, K, R, E> Future for BreakerFuture<F, K>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
    K: Classify<R, E>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Rejected { error } => {
                let error = error.take().expect("polled after completion");
                Poll::Ready(Err(Error::Breaker(error).into()))
            }
            StateProj::Called {
                future,
                guard,
                start_ns,
                classify,
            } => {
                let result = std::task::ready!(future.poll(cx));
                let permit = guard.permit.take().expect("outcome recorded once");
                let shared = &guard.shared;
                let is_failure = classify.is_failure(&result);
                // A failure may trip the breaker, which needs the real time for its deadline.
                let now = if is_failure {
                    shared.clock.done_now_ns()
                } else {
                    shared.now_if_needed()
                };
                let outcome = CallOutcome {
                    is_failure,
                    latency_ns: now.saturating_sub(*start_ns),
                };
                let transition = shared.breaker.on_result(now, permit, outcome);
                shared.emit(transition);
                Poll::Ready(result.map_err(Into::into))
            }
        }
    }
}
