//! Retries as a tower layer: exponential backoff with jitter
//! ([`crate::policy::backoff`]), a retry budget ([`crate::policy::budget`], shareable with
//! the hedge layer so both draw on one bound), only for requests the policy can clone
//! (idempotent or explicitly marked), and never past the caller's [`Deadline`].
//!
//! The success path clones the request once (to be able to retry) and allocates nothing else.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use colony_base::SplitMix64;
use tower::{Layer, Service};

use super::deadline::{Deadline, HasDeadline};
use super::{BoxError, Clock, Observe};
use crate::event::{Event, LayerKind};
use crate::policy::backoff::Backoff;
use crate::policy::budget::RetryBudget;

/// Which requests may be retried, and after which results.
pub trait RetryPolicy<Req, Res>: Clone + Send + Sync + 'static {
    /// A copy of `request` for a later attempt, or `None` when it must not be retried (not
    /// idempotent and not marked retryable).
    fn clone_request(&self, request: &Req) -> Option<Req>;

    /// Whether `result` warrants another attempt.
    fn is_retryable(&self, result: &Result<Res, BoxError>) -> bool;

    /// The caller's deadline, if the request carries one.
    fn deadline(&self, _request: &Req) -> Option<Deadline> {
        None
    }
}

/// Requests that know whether repeating them is safe.
pub trait Idempotency {
    /// Whether sending the request twice has the effect of sending it once (GET, PUT of a
    /// value, a CAS with an index), or the caller explicitly marked it retryable.
    fn is_idempotent(&self) -> bool;
}

/// Retries idempotent requests after any error, except the layers' own non-retryable
/// refusals (a passed deadline).
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryIdempotentErrors;

impl<Req, Res> RetryPolicy<Req, Res> for RetryIdempotentErrors
where
    Req: Clone + Idempotency + HasDeadline,
{
    fn clone_request(&self, request: &Req) -> Option<Req> {
        request.is_idempotent().then(|| request.clone())
    }

    fn is_retryable(&self, result: &Result<Res, BoxError>) -> bool {
        match result {
            Ok(_) => false,
            Err(error) => super::Error::from_box(error).is_none_or(super::Error::is_retryable),
        }
    }

    fn deadline(&self, request: &Req) -> Option<Deadline> {
        request.deadline()
    }
}

impl<T: Idempotency> Idempotency for super::deadline::WithDeadline<T> {
    fn is_idempotent(&self) -> bool {
        self.request.is_idempotent()
    }
}

/// Retry parameters.
#[derive(Debug, Clone, Copy)]
pub struct RetryConfig {
    /// Retries per logical request at most (3 means up to 4 attempts).
    pub retries_max: u32,
    /// Delays between attempts.
    pub backoff: Backoff,
    /// Whether this layer deposits each logical request in the budget (turn off when an
    /// outer layer sharing the budget already does).
    pub deposits: bool,
}

#[derive(Debug)]
struct Shared {
    config: RetryConfig,
    budget: Arc<RetryBudget>,
    observe: Observe,
    clock: Clock,
    seed: AtomicU64,
}

impl Shared {
    fn rng(&self) -> SplitMix64 {
        SplitMix64::new(
            self.seed
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed),
        )
    }
}

/// Retries failed calls; see the module doc.
#[derive(Debug, Clone)]
pub struct RetryLayer<P> {
    shared: Arc<Shared>,
    policy: P,
}

impl<P> RetryLayer<P> {
    /// A retry layer drawing on `budget`; `seed` seeds the jitter.
    pub fn new(
        config: RetryConfig,
        budget: Arc<RetryBudget>,
        policy: P,
        observe: Observe,
        clock: Clock,
        seed: u64,
    ) -> Self {
        let shared = Shared {
            config,
            budget,
            observe,
            clock,
            seed: AtomicU64::new(seed),
        };
        Self {
            shared: Arc::new(shared),
            policy,
        }
    }
}

impl<S, P: Clone> Layer<S> for RetryLayer<P> {
    type Service = RetryService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            shared: self.shared.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// The retry service; see [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct RetryService<S, P> {
    inner: S,
    shared: Arc<Shared>,
    policy: P,
}

impl<S, P, Req> Service<Req> for RetryService<S, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: RetryPolicy<Req, S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RetryFuture<S, P, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let now_ns = self.shared.clock.call_now_ns();
        if self.shared.config.deposits {
            self.shared.budget.deposit(now_ns);
        }
        let spare = self.policy.clone_request(&request);
        let deadline = self.policy.deadline(&request);
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let future = service.call(request);
        RetryFuture {
            state: State::Calling { future },
            service,
            spare,
            deadline,
            retries: 0,
            previous_delay_ns: self.shared.config.backoff.base_ns,
            shared: self.shared.clone(),
            policy: self.policy.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The retry's response future.
    pub struct RetryFuture<S: Service<Req>, P, Req> {
        #[pin]
        state: State<S::Future>,
        service: S,
        spare: Option<Req>,
        deadline: Option<Deadline>,
        retries: u32,
        previous_delay_ns: u64,
        shared: Arc<Shared>,
        policy: P,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        Waiting { #[pin] sleep: tokio::time::Sleep },
        Readying,
    }
}

impl<S, P, Req> Future for RetryFuture<S, P, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: RetryPolicy<Req, S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = std::task::ready!(future.poll(cx)).map_err(Into::into);
                    if !this.policy.is_retryable(&result) || this.spare.is_none() {
                        return Poll::Ready(result);
                    }
                    let shared = &**this.shared;
                    if *this.retries >= shared.config.retries_max {
                        return Poll::Ready(result);
                    }
                    let now_ns = shared.clock.done_now_ns();
                    let mut rng = shared.rng();
                    let delay_ns = shared.config.backoff.delay_ns(
                        *this.retries,
                        *this.previous_delay_ns,
                        &mut rng,
                    );
                    let at_ns = now_ns.saturating_add(delay_ns);
                    if this.deadline.is_some_and(|d| at_ns >= d.at_ns) {
                        shared.observe.reject(LayerKind::Retry, "deadline");
                        return Poll::Ready(result);
                    }
                    if !shared.budget.try_withdraw(now_ns) {
                        shared.observe.reject(LayerKind::Retry, "budget");
                        return Poll::Ready(result);
                    }
                    *this.retries += 1;
                    *this.previous_delay_ns = delay_ns;
                    shared.observe.sink.emit(&Event::Retry {
                        name: &shared.observe.name,
                        attempt: *this.retries,
                        delay_ns,
                    });
                    let sleep = tokio::time::sleep(Duration::from_nanos(delay_ns));
                    this.state.set(State::Waiting { sleep });
                }
                StateProj::Waiting { sleep } => {
                    std::task::ready!(sleep.poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    if let Err(error) = std::task::ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(error.into()));
                    }
                    let request = this
                        .spare
                        .take()
                        .expect("a spare request exists when retrying");
                    *this.spare = this.policy.clone_request(&request);
                    let future = this.service.call(request);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}
